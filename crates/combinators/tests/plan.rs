//! Tests of layer plans: the examples, every error message, and properties
//! (round trip through `Display`, no panic on any input, bounds).

use patchbay_combinators::{
    Merge, Plan, PlanError, PlanLocation, PlanStep, MAX_APPLICATIONS, MAX_REPEAT, PLAN_HELP,
};
use proptest::prelude::*;

/// The layer applications of a plan, in order, with each group flattened to
/// its members: an independent reading of the steps.
fn flatten(plan: &Plan) -> Vec<usize> {
    let mut out = Vec::new();
    for step in plan.steps() {
        match step {
            PlanStep::Layer(layer) => out.push(*layer),
            PlanStep::Repeat { layer, times } => out.extend(std::iter::repeat_n(*layer, *times)),
            PlanStep::Parallel { layers, .. } => out.extend(layers),
        }
    }
    out
}

fn err(text: &str, n: usize) -> PlanError {
    match Plan::parse(text, n) {
        Ok(plan) => panic!("{text:?} parsed as {plan}, expected an error"),
        Err(e) => e,
    }
}

fn msg(text: &str, n: usize) -> String {
    err(text, n).to_string()
}

// ---------------------------------------------------------------- examples

#[test]
fn drop_a_layer() {
    let plan = Plan::parse("0-9,11-29", 30).unwrap();
    let expected: Vec<usize> = (0..10).chain(11..30).collect();
    assert_eq!(flatten(&plan), expected);
    assert!(plan.steps().iter().all(|s| matches!(s, PlanStep::Layer(_))));
    assert_eq!(plan.layer_applications(), 29);
    assert_eq!(plan.used_layers(), expected);
    assert!(!plan.is_identity(30));
    assert_eq!(plan.to_string(), "0-9,11-29");
    assert_eq!(plan, Plan::drop(30, &[10]).unwrap());
}

#[test]
fn repeat_a_layer() {
    let plan = Plan::parse("0-4,5x3,6-29", 30).unwrap();
    assert_eq!(plan.steps().len(), 30);
    assert_eq!(plan.steps()[4], PlanStep::Layer(4));
    assert_eq!(plan.steps()[5], PlanStep::Repeat { layer: 5, times: 3 });
    assert_eq!(plan.steps()[6], PlanStep::Layer(6));
    assert_eq!(plan.layer_applications(), 32);
    assert_eq!(plan.used_layers(), (0..30).collect::<Vec<_>>());
    assert_eq!(plan.to_string(), "0-4,5x3,6-29");
    assert_eq!(plan, Plan::repeat(30, 5, 3).unwrap());
}

#[test]
fn parallel_pair() {
    let plan = Plan::parse("0-9,(10|11),12-29", 30).unwrap();
    assert_eq!(plan.steps().len(), 29);
    assert_eq!(
        plan.steps()[10],
        PlanStep::Parallel {
            layers: vec![10, 11],
            merge: Merge::SumUpdates
        }
    );
    assert_eq!(plan.layer_applications(), 30);
    assert_eq!(plan.used_layers(), (0..30).collect::<Vec<_>>());
    assert_eq!(plan.to_string(), "0-9,(10|11),12-29");
    assert_eq!(
        plan,
        Plan::parallel(30, 10..=11, Merge::SumUpdates).unwrap()
    );
    // The merge may be named; `sum` is the default and is not printed.
    assert_eq!(Plan::parse("0-9,(10|11)/sum,12-29", 30).unwrap(), plan);
}

#[test]
fn reversed() {
    let plan = Plan::parse("29-0", 30).unwrap();
    assert_eq!(flatten(&plan), (0..30).rev().collect::<Vec<_>>());
    assert_eq!(plan.to_string(), "29-0");
    assert!(!plan.is_identity(30));
}

#[test]
fn parallel_range_and_mean() {
    let plan = Plan::parse(" 0 - 9 , ( 10 - 13 | 20 ) / mean , 14-29 ", 30).unwrap();
    assert_eq!(
        plan.steps()[10],
        PlanStep::Parallel {
            layers: vec![10, 11, 12, 13, 20],
            merge: Merge::Mean
        }
    );
    assert_eq!(plan.to_string(), "0-9,(10-13|20)/mean,14-29");
    let down = Plan::parse("(13-10)", 30).unwrap();
    assert_eq!(down.to_string(), "(13-10)");
    assert_eq!(
        down.steps(),
        [PlanStep::Parallel {
            layers: vec![13, 12, 11, 10],
            merge: Merge::SumUpdates
        }]
    );
}

#[test]
fn swap_and_canonical_forms() {
    let swap = Plan::swap(30, 10, 11).unwrap();
    assert_eq!(swap.to_string(), "0-9,11,10,12-29");
    assert_eq!(Plan::parse("0-9,11,10,12-29", 30).unwrap(), swap);
    assert_eq!(Plan::parse("0-9,11-10,12-29", 30).unwrap(), swap);
    assert!(Plan::swap(30, 7, 7).unwrap().is_identity(30));
    // Consecutive applications of one layer are one repeat, whatever the spelling.
    let a = Plan::parse("5,5,5", 30).unwrap();
    assert_eq!(a.steps(), [PlanStep::Repeat { layer: 5, times: 3 }]);
    assert_eq!(a, Plan::parse("5x2,5", 30).unwrap());
    assert_eq!(
        a,
        Plan::parse("4-5,5x2", 30).unwrap().steps()[1..]
            .to_vec()
            .pipe(30)
    );
    assert_eq!(
        Plan::parse("5x1", 30).unwrap().steps(),
        [PlanStep::Layer(5)]
    );
    assert_eq!(
        Plan::parse("5-5", 30).unwrap().steps(),
        [PlanStep::Layer(5)]
    );
    assert_eq!(Plan::parse("007", 30).unwrap().to_string(), "7");
    assert_eq!(Plan::parse("3,4", 30).unwrap().to_string(), "3,4");
    assert_eq!(Plan::parse("3,4,5", 30).unwrap().to_string(), "3-5");
    assert_eq!(
        Plan::parse("4,5x2,6", 30).unwrap().to_string(),
        "4,5x2,6",
        "a repeat breaks a range"
    );
    assert_eq!(Plan::parse("(5|4|3)", 30).unwrap().to_string(), "(5-3)");
    assert_eq!(Plan::parse("(3|4)", 30).unwrap().to_string(), "(3|4)");
}

/// `Vec<PlanStep> -> Plan` in a chain.
trait Pipe {
    fn pipe(self, n: usize) -> Plan;
}
impl Pipe for Vec<PlanStep> {
    fn pipe(self, n: usize) -> Plan {
        Plan::from_steps(self, n).unwrap()
    }
}

#[test]
fn identity_spellings() {
    for n in [1, 2, 3, 30, 100] {
        for text in ["all", "*", " all ", " * "] {
            let plan = Plan::parse(text, n).unwrap();
            assert!(plan.is_identity(n), "{text} for {n}");
            assert_eq!(plan, Plan::identity(n));
        }
        let range = format!("0-{}", n - 1);
        assert!(Plan::parse(&range, n).unwrap().is_identity(n));
        assert!(!Plan::identity(n).is_identity(n + 1));
        assert!(!Plan::identity(n + 1).is_identity(n));
    }
    assert!(Plan::parse("0-9,10-29", 30).unwrap().is_identity(30));
    assert!(Plan::parse("0-9,10,11,12-29", 30).unwrap().is_identity(30));
    assert_eq!(Plan::identity(30).to_string(), "0-29");
    assert_eq!(Plan::identity(2).to_string(), "0,1");
    assert_eq!(Plan::identity(1).to_string(), "0");
    // `all` is an item like any other: the model twice.
    let twice = Plan::parse("all,*", 3).unwrap();
    assert_eq!(flatten(&twice), [0, 1, 2, 0, 1, 2]);
    assert_eq!(twice.to_string(), "0-2,0-2");
    assert_eq!(
        Plan::parse("(all)/mean", 3).unwrap().to_string(),
        "(0-2)/mean"
    );
    // A model without layers: the identity is empty and prints as `all`.
    let empty = Plan::parse("all", 0).unwrap();
    assert!(empty.steps().is_empty());
    assert!(empty.is_identity(0));
    assert_eq!(empty, Plan::identity(0));
    assert_eq!(empty.to_string(), "all");
    assert_eq!(Plan::from_steps(vec![], 0).unwrap(), empty);
}

#[test]
fn builders() {
    assert_eq!(
        Plan::drop(30, &[29, 0, 0, 15]).unwrap().to_string(),
        "1-14,16-28"
    );
    assert_eq!(Plan::drop(3, &[0, 1, 2]), Err(PlanError::Empty));
    assert!(matches!(
        Plan::drop(30, &[30]),
        Err(PlanError::OutOfRange { layer: 30, .. })
    ));
    assert!(matches!(
        Plan::repeat(30, 5, 0),
        Err(PlanError::ZeroRepeat { .. })
    ));
    assert!(matches!(
        Plan::repeat(30, 5, MAX_REPEAT + 1),
        Err(PlanError::RepeatTooLarge { .. })
    ));
    assert!(Plan::repeat(30, 5, 1).unwrap().is_identity(30));
    assert!(matches!(
        Plan::swap(30, 3, 30),
        Err(PlanError::OutOfRange { layer: 30, .. })
    ));
    assert!(matches!(
        Plan::parallel(30, 10..=10, Merge::Mean),
        Err(PlanError::GroupTooSmall { .. })
    ));
    assert!(matches!(
        Plan::parallel(30, 28..=30, Merge::Mean),
        Err(PlanError::OutOfRange { layer: 30, .. })
    ));
    assert_eq!(
        Plan::parallel(30, 0..=29, Merge::SumUpdates)
            .unwrap()
            .to_string(),
        "(0-29)"
    );
    // Huge layer counts fail on the bound without allocating them.
    assert!(matches!(
        Plan::drop(usize::MAX, &[]),
        Err(PlanError::TooLong { .. })
    ));
    assert!(matches!(
        Plan::parallel(usize::MAX, 0..=usize::MAX - 1, Merge::Mean),
        Err(PlanError::TooLong { .. })
    ));
    assert!(matches!(
        Plan::swap(usize::MAX, 0, 1),
        Err(PlanError::TooLong { .. })
    ));
}

#[test]
fn from_steps_validates() {
    use PlanStep::*;
    let e = Plan::from_steps(vec![Layer(0), Layer(30)], 30).unwrap_err();
    assert_eq!(
        e.to_string(),
        "layer 30 in step 1 is out of range: the model has 30 layers (0-29)"
    );
    assert_eq!(e.location(), Some(PlanLocation::Step(1)));
    assert_eq!(
        Plan::from_steps(vec![Repeat { layer: 2, times: 0 }], 30)
            .unwrap_err()
            .to_string(),
        "repeat count must be at least 1: `2x0` in step 0"
    );
    assert_eq!(
        Plan::from_steps(
            vec![
                Layer(1),
                Parallel {
                    layers: vec![3],
                    merge: Merge::Mean
                }
            ],
            30
        )
        .unwrap_err()
        .to_string(),
        "a parallel group needs at least two layers: `(3)/mean` in step 1"
    );
    assert_eq!(
        Plan::from_steps(
            vec![Parallel {
                layers: vec![3, 4, 3],
                merge: Merge::SumUpdates
            }],
            30
        )
        .unwrap_err()
        .to_string(),
        "layer 3 appears twice in a parallel group in step 0"
    );
    assert_eq!(Plan::from_steps(vec![], 30), Err(PlanError::Empty));
    assert!(matches!(
        Plan::from_steps(
            vec![
                Repeat {
                    layer: 0,
                    times: 1000
                },
                Layer(0),
                Repeat {
                    layer: 0,
                    times: 100
                }
            ],
            1
        ),
        Err(PlanError::RepeatTooLarge {
            layer: 0,
            times: 1101,
            at: PlanLocation::Step(2)
        })
    ));
    // Canonical form.
    let plan = Plan::from_steps(
        vec![
            Layer(1),
            Repeat { layer: 1, times: 2 },
            Repeat { layer: 2, times: 1 },
        ],
        3,
    )
    .unwrap();
    assert_eq!(plan.steps(), [Repeat { layer: 1, times: 3 }, Layer(2)]);
}

// ---------------------------------------------------------------- messages

#[test]
fn error_messages() {
    let cases: &[(&str, usize, &str)] = &[
        ("", 30, "empty plan: name at least one layer, e.g. `0-9,11-29` or `all`"),
        ("  \t", 30, "empty plan: name at least one layer, e.g. `0-9,11-29` or `all`"),
        (
            "0-9,31",
            30,
            "layer 31 at byte 4 is out of range: the model has 30 layers (0-29)",
        ),
        (
            "0-30",
            30,
            "layer 30 at byte 2 is out of range: the model has 30 layers (0-29)",
        ),
        ("1", 1, "layer 1 at byte 0 is out of range: the model has 1 layer (0)"),
        ("0", 0, "layer 0 at byte 0 is out of range: the model has no layers"),
        (
            "(1|2|40)",
            30,
            "layer 40 at byte 5 is out of range: the model has 30 layers (0-29)",
        ),
        ("0-4,5x0,6-29", 30, "repeat count must be at least 1: `5x0` at byte 4"),
        ("5 x 0", 30, "repeat count must be at least 1: `5 x 0` at byte 0"),
        (
            "5x1025",
            30,
            "layer 5 runs 1025 times in a row at byte 0: at most 1024 are allowed",
        ),
        (
            "5x1024,5-6",
            30,
            "layer 5 runs 1025 times in a row at byte 7: at most 1024 are allowed",
        ),
        (
            "5x100000000000000000000",
            30,
            "number `100000000000000000000` at byte 2 is too large",
        ),
        (
            "99999999999999999999999",
            30,
            "number `99999999999999999999999` at byte 0 is too large",
        ),
        ("0-9,(10|11,12-29", 30, "unexpected character ',' at byte 10: expected '|' between the layers of a group, or ')'"),
        ("0-9,(10|11", 30, "unclosed '(' at byte 4"),
        ("(10|11", 30, "unclosed '(' at byte 0"),
        ("(10|", 30, "unclosed '(' at byte 0"),
        ("0-9)", 30, "unmatched ')' at byte 3"),
        (")", 30, "unmatched ')' at byte 0"),
        ("0-9,(10),11-29", 30, "a parallel group needs at least two layers: `(10)` at byte 4"),
        ("()", 30, "a parallel group needs at least two layers: `()` at byte 0"),
        ("(all)", 1, "a parallel group needs at least two layers: `(all)` at byte 0"),
        ("(10|10)", 30, "layer 10 appears twice in a parallel group at byte 4"),
        ("(8-11|10)", 30, "layer 10 appears twice in a parallel group at byte 6"),
        ("((1|2)|3)", 30, "parallel groups cannot be nested: '(' at byte 1"),
        ("(1|2)/max", 30, "unknown merge `max` at byte 6: expected `sum` or `mean`"),
        (
            "(1|2)/",
            30,
            "unexpected end of the plan at byte 6: expected `sum` or `mean` after '/'",
        ),
        (
            "0-9q",
            30,
            "unexpected character 'q' at byte 3: expected ',' or the end of the plan",
        ),
        (
            "q",
            30,
            "unexpected character 'q' at byte 0: expected a layer `N`, a range `A-B`, \
             a repeat `NxK`, a group `(A|B)` or `all`",
        ),
        (
            "0-9,mean",
            30,
            "unexpected word `mean` at byte 4: expected a layer `N`, a range `A-B`, \
             a repeat `NxK`, a group `(A|B)` or `all`",
        ),
        (
            "0-9 11",
            30,
            "unexpected number `11` at byte 4: expected ',' or the end of the plan",
        ),
        (
            "0-",
            30,
            "unexpected end of the plan at byte 2: expected a layer number after '-'",
        ),
        (
            "3x",
            30,
            "unexpected end of the plan at byte 2: expected a repeat count after 'x'",
        ),
        (
            "3x-1",
            30,
            "unexpected character '-' at byte 2: expected a repeat count after 'x'",
        ),
        (
            "(1|)",
            30,
            "unexpected character ')' at byte 3: expected a layer `N` or a range `A-B` inside '(...)'",
        ),
        (
            "0-9;11",
            30,
            "unexpected character ';' at byte 3: expected ',' or the end of the plan",
        ),
        (
            "0-9,é",
            30,
            "unexpected character 'é' at byte 4: expected a layer `N`, a range `A-B`, \
             a repeat `NxK`, a group `(A|B)` or `all`",
        ),
        (
            "0-9,,11",
            30,
            "empty item at byte 4: two commas in a row, or a comma at the start or the end",
        ),
        (
            ",0",
            30,
            "empty item at byte 0: two commas in a row, or a comma at the start or the end",
        ),
        (
            "0-9, ",
            30,
            "empty item at byte 5: two commas in a row, or a comma at the start or the end",
        ),
        (
            "0x1024,1x1024,2x1024,3x1024,4",
            30,
            "the plan is too long at byte 28: it makes more than 4096 layer applications per forward pass",
        ),
    ];
    for (text, n, expected) in cases {
        assert_eq!(&msg(text, *n), expected, "plan {text:?} with {n} layers");
    }
}

#[test]
fn long_text_is_shortened_in_messages() {
    let digits = "9".repeat(10_000);
    let m = msg(&digits, 30);
    assert!(m.len() < 100, "{m}");
    assert!(m.starts_with("number `9999"), "{m}");
    let word = "z".repeat(10_000);
    assert!(msg(&word, 30).len() < 200);
}

#[test]
fn bounds_are_checked_before_expanding() {
    // Each of these would need a huge allocation if expanded first.
    for text in [
        "0x1000000000",
        "0x18446744073709551615",
        "0-18446744073709551614",
        "(0-18446744073709551614)",
        "all",
        "(all)",
    ] {
        let e = err(text, usize::MAX);
        assert!(
            matches!(
                e,
                PlanError::TooLong { .. } | PlanError::RepeatTooLarge { .. }
            ),
            "{text}: {e}"
        );
    }
    // Exactly at the bounds is fine.
    let p = Plan::parse("0x1024,1x1024,2x1024,3x1024", 4).unwrap();
    assert_eq!(p.layer_applications(), MAX_APPLICATIONS);
    assert_eq!(p.to_string(), "0x1024,1x1024,2x1024,3x1024");
    assert!(Plan::parse("all", MAX_APPLICATIONS).is_ok());
    assert!(matches!(
        err("all", MAX_APPLICATIONS + 1),
        PlanError::TooLong { .. }
    ));
    assert!(Plan::parse(&format!("(0-{})", MAX_APPLICATIONS - 1), MAX_APPLICATIONS).is_ok());
    // Layers near usize::MAX print and parse back (no wrap-around in ranges).
    let n = usize::MAX;
    let top = n - 1;
    let plan = Plan::parse(&format!("{top},0,1"), n).unwrap();
    assert_eq!(plan.to_string(), format!("{top},0,1"));
    assert_eq!(Plan::parse(&plan.to_string(), n).unwrap(), plan);
}

#[test]
fn help_mentions_every_form() {
    for form in [
        "all",
        "A-B",
        "NxK",
        "(A|B|...)",
        "/mean",
        "0-9,11-29",
        "29-0",
    ] {
        assert!(PLAN_HELP.contains(form), "{form}");
    }
    assert!(PLAN_HELP.contains(&format!("K <= {MAX_REPEAT}")));
    assert!(PLAN_HELP.contains(&format!("At most {MAX_APPLICATIONS} layer applications")));
    for example in [
        "0-9,11-29",
        "0-4,5x3,6-29",
        "0-9,(10|11),12-29",
        "29-0",
        "(10-13)",
    ] {
        let plan = Plan::parse(example, 30).unwrap();
        assert_eq!(plan.to_string(), example);
    }
}

#[test]
fn byte_locations_point_into_the_text() {
    let text = "0-9, (10 | 11 | 99), 12-29";
    let e = err(text, 30);
    let Some(PlanLocation::Byte(at)) = e.location() else {
        panic!("{e:?}");
    };
    assert!(text[at..].starts_with("99"));
}

// ---------------------------------------------------------------- properties

/// A random plan (as steps, possibly not canonical) for a model of `n` layers.
fn arb_steps(n: usize) -> impl Strategy<Value = Vec<PlanStep>> {
    let layer = 0..n;
    let step = prop_oneof![
        4 => layer.clone().prop_map(PlanStep::Layer),
        1 => (layer.clone(), 1..6usize).prop_map(|(layer, times)| PlanStep::Repeat { layer, times }),
        1 => (
            Just(()).prop_perturb(move |_, mut rng| {
                // 2..=min(n, 6) distinct layers in random order.
                let k = 2 + (rng.next_u32() as usize) % (n.min(6) - 1);
                let mut all: Vec<usize> = (0..n).collect();
                for i in 0..k {
                    let j = i + (rng.next_u32() as usize) % (n - i);
                    all.swap(i, j);
                }
                all.truncate(k);
                all
            }),
            prop_oneof![Just(Merge::SumUpdates), Just(Merge::Mean)],
        )
            .prop_map(|(layers, merge)| PlanStep::Parallel { layers, merge }),
    ];
    prop::collection::vec(step, 1..40)
}

fn arb_plan() -> impl Strategy<Value = (Plan, usize)> {
    (2..50usize).prop_flat_map(|n| {
        arb_steps(n).prop_map(move |steps| (Plan::from_steps(steps, n).unwrap(), n))
    })
}

/// Text made of the plan alphabet, with long numbers and deep nesting likely.
fn plan_like_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("(".to_string()),
        Just(")".to_string()),
        Just("|".to_string()),
        Just(",".to_string()),
        Just("-".to_string()),
        Just("x".to_string()),
        Just("/".to_string()),
        Just("*".to_string()),
        Just(" ".to_string()),
        Just("all".to_string()),
        Just("mean".to_string()),
        Just("sum".to_string()),
        "[0-9]{1,3}",
        "[0-9]{15,40}",
        "[a-zé;\\t]",
    ];
    prop::collection::vec(token, 0..30).prop_map(|t| t.concat())
}

/// One item of a plan, generated from the grammar.
#[derive(Debug, Clone)]
enum Item {
    One(usize),
    Span(usize, usize),
    Repeat(usize, usize),
    /// Members (`a` or `a-b`) and the merge suffix, if any.
    Group(Vec<(usize, Option<usize>)>, Option<&'static str>),
    All,
}

fn arb_item() -> impl Strategy<Value = Item> {
    let layer = 0..36usize;
    let member = (layer.clone(), prop::option::weighted(0.3, layer.clone()));
    prop_oneof![
        3 => layer.clone().prop_map(Item::One),
        3 => (layer.clone(), layer.clone()).prop_map(|(a, b)| Item::Span(a, b)),
        2 => (layer.clone(), 0..6usize).prop_map(|(l, k)| Item::Repeat(l, k)),
        2 => (
            prop::collection::vec(member, 1..5),
            prop::option::weighted(
                0.5,
                prop_oneof![Just("sum"), Just("mean"), Just("max")]
            ),
        )
            .prop_map(|(m, merge)| Item::Group(m, merge)),
        1 => Just(Item::All),
    ]
}

/// Items rendered as plan text, with or without spaces around the tokens.
fn render(items: &[Item], spaced: bool) -> String {
    let s = if spaced { " " } else { "" };
    let span = |a: usize, b: Option<usize>| match b {
        None => a.to_string(),
        Some(b) => format!("{a}{s}-{s}{b}"),
    };
    let parts: Vec<String> = items
        .iter()
        .map(|item| match item {
            Item::One(l) => l.to_string(),
            Item::Span(a, b) => span(*a, Some(*b)),
            Item::Repeat(l, k) => format!("{l}{s}x{s}{k}"),
            Item::All => "all".to_string(),
            Item::Group(members, merge) => {
                let inner: Vec<String> = members.iter().map(|&(a, b)| span(a, b)).collect();
                let suffix = merge.map(|m| format!("{s}/{s}{m}")).unwrap_or_default();
                format!("({s}{}{s}){suffix}", inner.join(&format!("{s}|{s}")))
            }
        })
        .collect();
    format!("{s}{}{s}", parts.join(&format!("{s},{s}")))
}

fn expand(a: usize, b: usize) -> Vec<usize> {
    if a <= b {
        (a..=b).collect()
    } else {
        (b..=a).rev().collect()
    }
}

/// What the items run, read straight from the grammar's definition, or
/// `None` when they break a rule.
fn reference(items: &[Item], n: usize) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for item in items {
        match item {
            Item::One(l) => out.extend(expand(*l, *l)),
            Item::Span(a, b) => out.extend(expand(*a, *b)),
            Item::Repeat(_, 0) => return None,
            Item::Repeat(l, k) => out.extend(std::iter::repeat_n(*l, *k)),
            Item::All => out.extend(0..n),
            Item::Group(members, merge) => {
                let layers: Vec<usize> = members
                    .iter()
                    .flat_map(|&(a, b)| expand(a, b.unwrap_or(a)))
                    .collect();
                let mut distinct = layers.clone();
                distinct.sort_unstable();
                distinct.dedup();
                if layers.len() < 2 || distinct.len() != layers.len() || *merge == Some("max") {
                    return None;
                }
                out.extend(layers);
            }
        }
    }
    (out.iter().all(|&l| l < n) && (n == 0 || !out.is_empty())).then_some(out)
}

/// What every successful parse must satisfy.
fn check_valid(text: &str, n: usize, plan: &Plan) -> Result<(), TestCaseError> {
    prop_assert!(n == 0 || !plan.steps().is_empty());
    prop_assert!(plan.layer_applications() <= MAX_APPLICATIONS);
    prop_assert_eq!(flatten(plan).len(), plan.layer_applications());
    for step in plan.steps() {
        match step {
            PlanStep::Layer(l) => prop_assert!(*l < n),
            PlanStep::Repeat { layer, times } => {
                prop_assert!(*layer < n);
                prop_assert!((2..=MAX_REPEAT).contains(times));
            }
            PlanStep::Parallel { layers, .. } => {
                prop_assert!(layers.len() >= 2);
                let mut sorted = layers.clone();
                sorted.sort_unstable();
                sorted.dedup();
                prop_assert_eq!(sorted.len(), layers.len(), "distinct members");
                prop_assert!(layers.iter().all(|&l| l < n));
            }
        }
    }
    let used = plan.used_layers();
    prop_assert!(used.windows(2).all(|w| w[0] < w[1]));
    prop_assert!(used.iter().all(|&l| l < n));
    let printed = plan.to_string();
    let reparsed = Plan::parse(&printed, n);
    prop_assert_eq!(
        reparsed.as_ref(),
        Ok(plan),
        "{:?} printed as {:?}",
        text,
        printed
    );
    Ok(())
}

fn check_error(text: &str, e: &PlanError) -> Result<(), TestCaseError> {
    let m = e.to_string();
    prop_assert!(!m.is_empty());
    prop_assert!(m.len() < 300, "long message: {}", m);
    if let Some(PlanLocation::Byte(at)) = e.location() {
        prop_assert!(at <= text.len());
        prop_assert!(text.is_char_boundary(at));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn display_parse_round_trip((plan, n) in arb_plan()) {
        check_valid("", n, &plan)?;
        // Parsing the printed form is the identity, and printing is stable.
        let again = Plan::parse(&plan.to_string(), n).unwrap();
        prop_assert_eq!(again.to_string(), plan.to_string());
    }

    #[test]
    fn canonical_steps_keep_the_applications(n in 2..30usize, steps in (2..30usize).prop_flat_map(arb_steps)) {
        // from_steps may merge steps but never changes what runs.
        let n = n.max(steps.iter().map(|s| match s {
            PlanStep::Layer(l) | PlanStep::Repeat { layer: l, .. } => *l + 1,
            PlanStep::Parallel { layers, .. } => layers.iter().max().unwrap() + 1,
        }).max().unwrap());
        let mut expected = Vec::new();
        for s in &steps {
            match s {
                PlanStep::Layer(l) => expected.push(*l),
                PlanStep::Repeat { layer, times } => expected.extend(std::iter::repeat_n(*layer, *times)),
                PlanStep::Parallel { layers, .. } => expected.extend(layers),
            }
        }
        let plan = Plan::from_steps(steps, n).unwrap();
        prop_assert_eq!(flatten(&plan), expected);
    }

    #[test]
    fn plan_like_text_never_panics(text in plan_like_text(), n in 0..40usize) {
        match Plan::parse(&text, n) {
            Ok(plan) => check_valid(&text, n, &plan)?,
            Err(e) => check_error(&text, &e)?,
        }
    }

    #[test]
    fn grammar_text_parses_as_the_grammar_says(
        items in prop::collection::vec(arb_item(), 1..8),
        spaced in any::<bool>(),
        n in 1..40usize,
    ) {
        let text = render(&items, spaced);
        match (reference(&items, n), Plan::parse(&text, n)) {
            (Some(expected), Ok(plan)) => {
                check_valid(&text, n, &plan)?;
                prop_assert_eq!(flatten(&plan), expected, "{}", text);
                let groups = items.iter().filter(|i| matches!(i, Item::Group(..))).count();
                let parallel = plan.steps().iter().filter(|s| matches!(s, PlanStep::Parallel { .. })).count();
                prop_assert_eq!(groups, parallel, "{}", text);
            }
            (None, Err(e)) => check_error(&text, &e)?,
            (expected, got) => prop_assert!(false, "{:?}: expected {:?}, got {:?}", text, expected, got),
        }
    }

    #[test]
    fn damaged_grammar_text_never_panics(
        items in prop::collection::vec(arb_item(), 1..8),
        spaced in any::<bool>(),
        n in 0..40usize,
        cut in any::<prop::sample::Index>(),
        insert in prop_oneof![Just(None), prop::char::range('!', '~').prop_map(Some)],
    ) {
        let mut text = render(&items, spaced);
        if !text.is_empty() {
            let at = cut.index(text.len());
            text.remove(at);
            if let Some(c) = insert {
                text.insert(at, c);
            }
        }
        match Plan::parse(&text, n) {
            Ok(plan) => check_valid(&text, n, &plan)?,
            Err(e) => check_error(&text, &e)?,
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>(), n in 0..40usize) {
        match Plan::parse(&text, n) {
            Ok(plan) => check_valid(&text, n, &plan)?,
            Err(e) => check_error(&text, &e)?,
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), n in prop_oneof![0..40usize, Just(usize::MAX)]) {
        let text = String::from_utf8_lossy(&bytes);
        match Plan::parse(&text, n) {
            Ok(plan) => {
                if n < 40 {
                    check_valid(&text, n, &plan)?;
                }
            }
            Err(e) => check_error(&text, &e)?,
        }
    }

    #[test]
    fn nested_parens_never_panic(depth in 0..200usize, inner in "[0-9|,]{0,10}") {
        let text = format!("{}{}{}", "(".repeat(depth), inner, ")".repeat(depth));
        match Plan::parse(&text, 30) {
            Ok(plan) => check_valid(&text, 30, &plan)?,
            Err(e) => check_error(&text, &e)?,
        }
    }

    #[test]
    fn ranges_expand_in_order(n in 1..60usize, a in 0..60usize, b in 0..60usize) {
        let text = format!("{a}-{b}");
        match Plan::parse(&text, n) {
            Ok(plan) => {
                let expected: Vec<usize> = if a <= b { (a..=b).collect() } else { (b..=a).rev().collect() };
                prop_assert_eq!(flatten(&plan), expected);
                prop_assert_eq!(plan.is_identity(n), a == 0 && b + 1 == n);
            }
            Err(PlanError::OutOfRange { layer, n_layers, .. }) => {
                prop_assert!(a >= n || b >= n);
                prop_assert!(layer >= n);
                prop_assert_eq!(n_layers, n);
            }
            Err(e) => prop_assert!(false, "{}: {}", text, e),
        }
    }

    #[test]
    fn identity_is_detected((plan, n) in arb_plan()) {
        let flat = flatten(&plan);
        let runs_each_layer_once = flat == (0..n).collect::<Vec<_>>()
            && plan.steps().iter().all(|s| matches!(s, PlanStep::Layer(_)));
        prop_assert_eq!(plan.is_identity(n), runs_each_layer_once);
        prop_assert!(Plan::identity(n).is_identity(n));
        prop_assert_eq!(Plan::parse(&plan.to_string(), n).unwrap().is_identity(n), plan.is_identity(n));
    }

    #[test]
    fn drop_is_the_identity_minus_the_dropped(n in 1..40usize, dropped in prop::collection::vec(0..40usize, 0..10)) {
        match Plan::drop(n, &dropped) {
            Ok(plan) => {
                let expected: Vec<usize> = (0..n).filter(|l| !dropped.contains(l)).collect();
                prop_assert_eq!(flatten(&plan), expected.clone());
                prop_assert_eq!(plan.used_layers(), expected);
                prop_assert_eq!(plan.is_identity(n), dropped.is_empty());
            }
            Err(PlanError::Empty) => prop_assert!((0..n).all(|l| dropped.contains(&l))),
            Err(PlanError::OutOfRange { layer, .. }) => prop_assert!(layer >= n && dropped.contains(&layer)),
            Err(e) => prop_assert!(false, "{}", e),
        }
    }
}
