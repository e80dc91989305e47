//! Layer plans: which decoder layers of a trained model one forward pass runs,
//! in which order, how often and side by side.
//!
//! See [`Plan`] for the syntax, [`PlanStep`] for what runs and [`Merge`]
//! for how parallel layers are merged.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::RangeInclusive;

/// The most layer applications one forward pass of a plan may make.
///
/// A layer repeated `K` times counts `K`; a parallel group counts one per
/// member. [`Plan::identity`] is the only plan exempt from it (a model with
/// more layers than this does not exist today).
pub const MAX_APPLICATIONS: usize = 4096;

/// The most times a layer may run in a row (`NxK` with `K` at most this).
pub const MAX_REPEAT: usize = 1024;

/// The grammar in a few lines, for a command line's `--help`.
pub const PLAN_HELP: &str = "\
A layer plan lists the decoder layers one forward pass runs, in order; layers count from 0.
Items are separated by commas; spaces around them are allowed.
  all, *      every layer in order (the model as trained)
  N           layer N
  A-B         layers A to B, both included; A > B runs them in reverse (29-0)
  NxK         layer N, K times in a row with the same weights (1 <= K <= 1024)
  (A|B|...)   the layers in parallel from the same input, their residual updates
              summed: x + (A(x) - x) + (B(x) - x); a member may be a range: (10-13)
  (A|B)/mean  the same group, merged by the mean of the outputs: (A(x) + B(x)) / 2
  @FILE       (command line) a mergekit passthrough YAML: its slices' layer_range
              [a, b) in order, e.g. [0,24]+[8,32] is 0-23,8-31
At most 4096 layer applications per forward pass. Examples for a 30-layer model:
  0-9,11-29 drops layer 10; 0-4,5x3,6-29 runs layer 5 three times;
  0-9,(10|11),12-29 runs 10 and 11 side by side; 29-0 reverses the order.";

/// How a parallel group's outputs become one.
///
/// Each member `Lᵢ` is a whole residual block, so its output `Lᵢ(x)` already
/// contains its input `x`; `Lᵢ(x) − x` is the update the block adds to the
/// residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Merge {
    /// `x + Σᵢ (Lᵢ(x) − x)`: every member adds its update to the shared
    /// input, as if each had seen `x` in series. Written `(a|b)` or
    /// `(a|b)/sum`.
    #[default]
    SumUpdates,
    /// `(1/k) Σᵢ Lᵢ(x)`: the mean of the `k` members' outputs, so the
    /// update is the mean of the updates. Written `(a|b)/mean`.
    Mean,
}

impl Merge {
    /// The name after `/` in a plan: `sum` or `mean`.
    pub fn name(self) -> &'static str {
        match self {
            Merge::SumUpdates => "sum",
            Merge::Mean => "mean",
        }
    }
}

impl fmt::Display for Merge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One step of a [`Plan`]: what runs on the output of the previous step.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PlanStep {
    /// Apply layer `i` once.
    Layer(usize),
    /// Apply `layer` `times` times in a row, with the same weights (each
    /// application has its own cache). In a canonical plan `times >= 2`.
    Repeat {
        /// The layer to repeat.
        layer: usize,
        /// How many times it runs in a row.
        times: usize,
    },
    /// Apply every layer of `layers` to the same input and merge the outputs.
    /// At least two layers, all distinct, in the order written.
    Parallel {
        /// The layers that run side by side.
        layers: Vec<usize>,
        /// How their outputs become one.
        merge: Merge,
    },
}

impl PlanStep {
    /// How many layer applications this step makes.
    pub fn applications(&self) -> usize {
        match self {
            PlanStep::Layer(_) => 1,
            PlanStep::Repeat { times, .. } => *times,
            PlanStep::Parallel { layers, .. } => layers.len(),
        }
    }
}

impl fmt::Display for PlanStep {
    /// The step in plan syntax: `5`, `5x3`, `(10|11)`, `(10-13)/mean`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanStep::Layer(layer) => write!(f, "{layer}"),
            PlanStep::Repeat { layer, times } => write!(f, "{layer}x{times}"),
            PlanStep::Parallel { layers, merge } => {
                f.write_str("(")?;
                write_compressed(f, layers, "|")?;
                f.write_str(")")?;
                match merge {
                    Merge::SumUpdates => Ok(()),
                    Merge::Mean => write!(f, "/{merge}"),
                }
            }
        }
    }
}

/// Where a [`PlanError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlanLocation {
    /// At this byte offset of the plan text ([`Plan::parse`]).
    Byte(usize),
    /// In this step (counted from 0) of the steps given to
    /// [`Plan::from_steps`].
    Step(usize),
    /// In the arguments of a convenience constructor such as [`Plan::swap`]
    /// (the message names the argument's value).
    Argument,
}

impl fmt::Display for PlanLocation {
    /// ` at byte 5`, ` in step 3`, or nothing for [`PlanLocation::Argument`]
    /// (with the leading space, so messages can append it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanLocation::Byte(offset) => write!(f, " at byte {offset}"),
            PlanLocation::Step(index) => write!(f, " in step {index}"),
            PlanLocation::Argument => Ok(()),
        }
    }
}

/// Why a plan was rejected. Each message names what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The plan names no layer at all.
    #[error("empty plan: name at least one layer, e.g. `0-9,11-29` or `all`")]
    Empty,
    /// Two commas in a row, or a comma at the start or the end.
    #[error("empty item{at}: two commas in a row, or a comma at the start or the end")]
    EmptyItem {
        /// Where the item should have been.
        at: PlanLocation,
    },
    /// Something the grammar does not allow here.
    #[error("unexpected {found}{at}: expected {expected}")]
    Unexpected {
        /// What was found: `character 'q'`, `word `mean``, `number `6``,
        /// `the end of the plan`.
        found: String,
        /// What the grammar allows here.
        expected: &'static str,
        /// Where it was found.
        at: PlanLocation,
    },
    /// A number that does not fit in a `usize`.
    #[error("number `{text}`{at} is too large")]
    NumberTooLarge {
        /// The digits (shortened when long).
        text: String,
        /// Where the number starts.
        at: PlanLocation,
    },
    /// A layer the model does not have.
    #[error("layer {layer}{at} is out of range: {}", describe_model(*n_layers))]
    OutOfRange {
        /// The layer named.
        layer: usize,
        /// How many layers the model has.
        n_layers: usize,
        /// Where it was named.
        at: PlanLocation,
    },
    /// `N x 0`.
    #[error("repeat count must be at least 1: `{text}`{at}")]
    ZeroRepeat {
        /// The repeat as written.
        text: String,
        /// Where it is.
        at: PlanLocation,
    },
    /// A layer that runs more than [`MAX_REPEAT`] times in a row.
    #[error(
        "layer {layer} runs {times} times in a row{at}: at most {max} are allowed",
        max = MAX_REPEAT
    )]
    RepeatTooLarge {
        /// The layer repeated.
        layer: usize,
        /// How many times in a row it would run.
        times: usize,
        /// Where the repeat (or the item that extends it) is.
        at: PlanLocation,
    },
    /// A `(` without its `)`.
    #[error("unclosed '('{at}")]
    Unclosed {
        /// Where the `(` is.
        at: PlanLocation,
    },
    /// A `)` without its `(`.
    #[error("unmatched ')'{at}")]
    Unmatched {
        /// Where the `)` is.
        at: PlanLocation,
    },
    /// A `(` inside a group.
    #[error("parallel groups cannot be nested: '('{at}")]
    NestedGroup {
        /// Where the inner `(` is.
        at: PlanLocation,
    },
    /// A group of fewer than two layers.
    #[error("a parallel group needs at least two layers: `{text}`{at}")]
    GroupTooSmall {
        /// The group as written.
        text: String,
        /// Where it starts.
        at: PlanLocation,
    },
    /// A layer named twice in one group.
    #[error("layer {layer} appears twice in a parallel group{at}")]
    DuplicateInGroup {
        /// The layer named twice.
        layer: usize,
        /// Where it is named the second time.
        at: PlanLocation,
    },
    /// A merge suffix other than `/sum` or `/mean`.
    #[error("unknown merge `{name}`{at}: expected `sum` or `mean`")]
    UnknownMerge {
        /// The name written after `/` (shortened when long).
        name: String,
        /// Where it is.
        at: PlanLocation,
    },
    /// More than [`MAX_APPLICATIONS`] layer applications per forward pass.
    #[error(
        "the plan is too long{at}: it makes more than {max} layer applications per forward pass",
        max = MAX_APPLICATIONS
    )]
    TooLong {
        /// Where the limit is crossed.
        at: PlanLocation,
    },
}

impl PlanError {
    /// Where the error is, if it is anywhere in particular (an [`Empty`]
    /// plan is nowhere). A command line can use a [`PlanLocation::Byte`] to point
    /// at the text.
    ///
    /// [`Empty`]: PlanError::Empty
    pub fn location(&self) -> Option<PlanLocation> {
        match self {
            PlanError::Empty => None,
            PlanError::EmptyItem { at }
            | PlanError::Unexpected { at, .. }
            | PlanError::NumberTooLarge { at, .. }
            | PlanError::OutOfRange { at, .. }
            | PlanError::ZeroRepeat { at, .. }
            | PlanError::RepeatTooLarge { at, .. }
            | PlanError::Unclosed { at }
            | PlanError::Unmatched { at }
            | PlanError::NestedGroup { at }
            | PlanError::GroupTooSmall { at, .. }
            | PlanError::DuplicateInGroup { at, .. }
            | PlanError::UnknownMerge { at, .. }
            | PlanError::TooLong { at } => Some(*at),
        }
    }
}

/// "the model has 30 layers (0-29)".
fn describe_model(n_layers: usize) -> String {
    match n_layers {
        0 => "the model has no layers".to_string(),
        1 => "the model has 1 layer (0)".to_string(),
        n => format!("the model has {n} layers (0-{})", n - 1),
    }
}

/// At most 40 characters of `text`, with `...` when cut.
fn snippet(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// A re-wiring of a model's decoder layers: the steps one forward pass runs,
/// in order.
///
/// A plan re-wires a model without copying a weight: it only says which
/// of the model's `n` layers (blocks `0..n`) to apply. It can
///
/// * **drop** layers: `0-9,11-29` skips layer 10 of a 30-layer model;
/// * **repeat** a layer with tied weights: `0-4,5x3,6-29` runs layer 5 three
///   times in a row;
/// * **re-order** or **swap** layers: `29-0` runs all 30 layers in reverse,
///   `0-9,11,10,12-29` swaps 10 and 11;
/// * run layers **in parallel** from the same input and merge them:
///   `0-9,(10|11),12-29` feeds layer 9's output to both 10 and 11 and passes
///   `x + (L10(x) - x) + (L11(x) - x)` to layer 12 (see [`Merge`]).
///
/// # Grammar
///
/// ```text
/// plan   = item ( "," item )*
/// item   = span                      N or A-B
///        | N "x" K                   layer N, K times in a row (1 <= K <= 1024)
///        | group
///        | "all" | "*"               every layer, 0 to n-1
/// span   = N                         one layer
///        | N "-" N                   a range, both ends included; A > B runs
///                                    it in reverse (29-0)
/// group  = "(" member ( "|" member )+ ")" [ "/" merge ]
/// member = span | "all" | "*"        a range runs each of its layers in parallel
/// merge  = "sum"                     the default: residual updates summed
///        | "mean"                    the mean of the layers' outputs
/// N, K   = decimal digits
/// ```
///
/// Whitespace is allowed around every token. Layers are numbered from 0 and
/// every number must be below the model's layer count. A group's layers are
/// distinct. One forward pass may make at most [`MAX_APPLICATIONS`] layer
/// applications (a layer repeated `K` times counts `K`, a group counts one per
/// member), and a layer may run at most [`MAX_REPEAT`] times in a row; both
/// bounds are checked before anything is expanded, so no input makes the
/// parser allocate much.
///
/// # Canonical form
///
/// A plan is always valid for the layer count it was built for (every layer
/// below it, groups of two or more distinct layers, within the bounds) and
/// kept in one canonical form, so two plans that run the same layers in the
/// same way compare equal: consecutive applications of one layer are a
/// single [`PlanStep::Repeat`] (`5,5,5` is `5x3`), and a repeat of one is a
/// [`PlanStep::Layer`] (`5x1` is `5`). Members of a group keep the order in
/// which they were written. `Display` prints the shortest form,
/// with ranges re-compressed (`0-9,11-29`), and parses back to the same plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Plan {
    steps: Vec<PlanStep>,
}

impl Plan {
    /// Parses a plan for a model of `n_layers` layers.
    ///
    /// ```
    /// use patchbay_combinators::{Merge, Plan, PlanStep};
    ///
    /// // Drop layer 10 of 30.
    /// let plan = Plan::parse("0-9,11-29", 30).unwrap();
    /// assert_eq!(plan.layer_applications(), 29);
    /// assert!(!plan.used_layers().contains(&10));
    ///
    /// // Layer 5 three times, with its weights tied.
    /// let plan = Plan::parse("0-4, 5x3, 6-29", 30).unwrap();
    /// assert_eq!(plan.steps()[5], PlanStep::Repeat { layer: 5, times: 3 });
    ///
    /// // Layers 10 and 11 side by side, their residual updates summed.
    /// let plan = Plan::parse("0-9,(10|11),12-29", 30).unwrap();
    /// assert_eq!(
    ///     plan.steps()[10],
    ///     PlanStep::Parallel { layers: vec![10, 11], merge: Merge::SumUpdates }
    /// );
    ///
    /// // The whole model, reversed; printed in its shortest form.
    /// assert_eq!(Plan::parse("29-0", 30).unwrap().to_string(), "29-0");
    /// assert!(Plan::parse("all", 30).unwrap().is_identity(30));
    ///
    /// let err = Plan::parse("0-9,31", 30).unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "layer 31 at byte 4 is out of range: the model has 30 layers (0-29)"
    /// );
    /// ```
    ///
    /// # Errors
    ///
    /// A [`PlanError`] naming what is wrong and at which byte: a syntax error,
    /// a layer `>= n_layers`, a repeat count of 0 or above [`MAX_REPEAT`], a
    /// group of fewer than two or of repeated layers, a number too large for a
    /// `usize`, or more than [`MAX_APPLICATIONS`] applications.
    pub fn parse(text: &str, n_layers: usize) -> Result<Plan, PlanError> {
        if text.trim().is_empty() {
            return Err(PlanError::Empty);
        }
        let mut parser = Parser {
            text,
            pos: 0,
            plan: Builder::new(n_layers),
        };
        parser.plan()?;
        Ok(parser.plan.finish())
    }

    /// The model as trained: every layer once, in order. For `n_layers == 0`
    /// the plan is empty (and prints as `all`).
    ///
    /// This is the one plan not bounded by [`MAX_APPLICATIONS`].
    pub fn identity(n_layers: usize) -> Plan {
        Plan {
            steps: (0..n_layers).map(PlanStep::Layer).collect(),
        }
    }

    /// True when the plan runs every layer of an `n_layers`-layer model once,
    /// in order (however it was written: `all`, `0-29`, `0-9,10-29`).
    pub fn is_identity(&self, n_layers: usize) -> bool {
        self.steps.len() == n_layers
            && self
                .steps
                .iter()
                .enumerate()
                .all(|(i, step)| *step == PlanStep::Layer(i))
    }

    /// The steps, in the order one forward pass runs them (in canonical
    /// form: see [`Plan`]).
    pub fn steps(&self) -> &[PlanStep] {
        &self.steps
    }

    /// How many layer applications one forward pass makes (a repeat counts
    /// its count, a group its members). This is the number of per-layer
    /// states (KV caches) the plan needs.
    pub fn layer_applications(&self) -> usize {
        self.steps.iter().map(PlanStep::applications).sum()
    }

    /// The distinct layers the plan uses, ascending: the only weights it
    /// needs.
    pub fn used_layers(&self) -> Vec<usize> {
        let mut used = BTreeSet::new();
        for step in &self.steps {
            match step {
                PlanStep::Layer(layer) | PlanStep::Repeat { layer, .. } => {
                    used.insert(*layer);
                }
                PlanStep::Parallel { layers, .. } => used.extend(layers.iter().copied()),
            }
        }
        used.into_iter().collect()
    }

    /// Validates `steps` for a model of `n_layers` layers and brings them to
    /// canonical form (consecutive applications of one layer become one
    /// [`PlanStep::Repeat`], a repeat of one a [`PlanStep::Layer`]).
    ///
    /// ```
    /// use patchbay_combinators::{Plan, PlanStep};
    /// let plan = Plan::from_steps(
    ///     vec![PlanStep::Layer(0), PlanStep::Layer(1), PlanStep::Layer(1)],
    ///     2,
    /// )
    /// .unwrap();
    /// assert_eq!(plan.to_string(), "0,1x2");
    /// assert!(Plan::from_steps(vec![PlanStep::Layer(2)], 2).is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// The [`PlanError`] of the first invalid step, located with
    /// [`PlanLocation::Step`]; [`PlanError::Empty`] for no steps (unless the
    /// model has no layers).
    pub fn from_steps(steps: Vec<PlanStep>, n_layers: usize) -> Result<Plan, PlanError> {
        Plan::build(steps, n_layers)
    }

    /// [`Plan::from_steps`] over any sequence of steps, consumed lazily: a
    /// sequence longer than the bounds fails without being collected.
    fn build(
        steps: impl IntoIterator<Item = PlanStep>,
        n_layers: usize,
    ) -> Result<Plan, PlanError> {
        let mut plan = Builder::new(n_layers);
        for (index, step) in steps.into_iter().enumerate() {
            let at = PlanLocation::Step(index);
            match step {
                PlanStep::Layer(layer) => plan.push_layer(layer, at)?,
                PlanStep::Repeat { layer, times } => {
                    if times == 0 {
                        return Err(PlanError::ZeroRepeat {
                            text: format!("{layer}x0"),
                            at,
                        });
                    }
                    plan.push_repeat(layer, times, at)?;
                }
                PlanStep::Parallel { layers, merge } => {
                    let mut group = Group::new(PlanLocation::Step(index));
                    for layer in layers {
                        group.push(&mut plan, layer, at)?;
                    }
                    let text = PlanStep::Parallel {
                        layers: group.layers.clone(),
                        merge,
                    }
                    .to_string();
                    plan.push_group(group, merge, snippet(&text))?;
                }
            }
        }
        if plan.steps.is_empty() && n_layers > 0 {
            return Err(PlanError::Empty);
        }
        Ok(plan.finish())
    }

    /// The model without `dropped` (in any order; repeats are ignored).
    ///
    /// ```
    /// use patchbay_combinators::Plan;
    /// assert_eq!(Plan::drop(30, &[10]).unwrap().to_string(), "0-9,11-29");
    /// ```
    ///
    /// # Errors
    ///
    /// [`PlanError::OutOfRange`] for a layer `>= n_layers`;
    /// [`PlanError::Empty`] when every layer is dropped.
    pub fn drop(n_layers: usize, dropped: &[usize]) -> Result<Plan, PlanError> {
        for &layer in dropped {
            check_layer(layer, n_layers, PlanLocation::Argument)?;
        }
        let dropped: BTreeSet<usize> = dropped.iter().copied().collect();
        let steps = (0..n_layers)
            .filter(|layer| !dropped.contains(layer))
            .map(PlanStep::Layer);
        Plan::build(steps, n_layers)
    }

    /// The model with `layer` run `times` times in a row where it stands.
    ///
    /// ```
    /// use patchbay_combinators::Plan;
    /// assert_eq!(Plan::repeat(30, 5, 3).unwrap().to_string(), "0-4,5x3,6-29");
    /// ```
    ///
    /// # Errors
    ///
    /// [`PlanError::OutOfRange`], [`PlanError::ZeroRepeat`],
    /// [`PlanError::RepeatTooLarge`] or [`PlanError::TooLong`].
    pub fn repeat(n_layers: usize, layer: usize, times: usize) -> Result<Plan, PlanError> {
        check_layer(layer, n_layers, PlanLocation::Argument)?;
        if times == 0 {
            return Err(PlanError::ZeroRepeat {
                text: format!("{layer}x0"),
                at: PlanLocation::Argument,
            });
        }
        if times > MAX_REPEAT {
            return Err(PlanError::RepeatTooLarge {
                layer,
                times,
                at: PlanLocation::Argument,
            });
        }
        let steps = (0..n_layers).map(|l| {
            if l == layer {
                PlanStep::Repeat { layer, times }
            } else {
                PlanStep::Layer(l)
            }
        });
        Plan::build(steps, n_layers)
    }

    /// The model with layers `a` and `b` exchanged (the identity when
    /// `a == b`).
    ///
    /// ```
    /// use patchbay_combinators::Plan;
    /// assert_eq!(Plan::swap(30, 10, 11).unwrap().to_string(), "0-9,11,10,12-29");
    /// ```
    ///
    /// # Errors
    ///
    /// [`PlanError::OutOfRange`] for a layer `>= n_layers`.
    pub fn swap(n_layers: usize, a: usize, b: usize) -> Result<Plan, PlanError> {
        check_layer(a, n_layers, PlanLocation::Argument)?;
        check_layer(b, n_layers, PlanLocation::Argument)?;
        let steps = (0..n_layers).map(|l| {
            PlanStep::Layer(if l == a {
                b
            } else if l == b {
                a
            } else {
                l
            })
        });
        Plan::build(steps, n_layers)
    }

    /// The model with the layers of `layers` (at least two) run side by side
    /// from the same input and merged by `merge`.
    ///
    /// ```
    /// use patchbay_combinators::{Merge, Plan};
    /// let plan = Plan::parallel(30, 10..=11, Merge::SumUpdates).unwrap();
    /// assert_eq!(plan.to_string(), "0-9,(10|11),12-29");
    /// let plan = Plan::parallel(30, 10..=13, Merge::Mean).unwrap();
    /// assert_eq!(plan.to_string(), "0-9,(10-13)/mean,14-29");
    /// ```
    ///
    /// # Errors
    ///
    /// [`PlanError::OutOfRange`] for a layer `>= n_layers`;
    /// [`PlanError::GroupTooSmall`] for fewer than two layers.
    pub fn parallel(
        n_layers: usize,
        layers: RangeInclusive<usize>,
        merge: Merge,
    ) -> Result<Plan, PlanError> {
        let (first, last) = (*layers.start(), *layers.end());
        if first >= last {
            return Err(PlanError::GroupTooSmall {
                text: format!("{first}..={last}"),
                at: PlanLocation::Argument,
            });
        }
        check_layer(last, n_layers, PlanLocation::Argument)?;
        if last - first >= MAX_APPLICATIONS {
            return Err(PlanError::TooLong {
                at: PlanLocation::Argument,
            });
        }
        let group = PlanStep::Parallel {
            layers: layers.collect(),
            merge,
        };
        let steps = (0..first)
            .map(PlanStep::Layer)
            .chain(std::iter::once(group))
            .chain((last + 1..n_layers).map(PlanStep::Layer));
        Plan::build(steps, n_layers)
    }
}

impl fmt::Display for Plan {
    /// The shortest canonical form: runs of consecutive layers as ranges
    /// (`0-9`, `29-0`), repeats as `NxK`, groups as `(A|B)` or `(A|B)/mean`.
    /// An empty plan (a model with no layers) prints as `all`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            return f.write_str("all");
        }
        let mut run: Vec<usize> = Vec::new();
        let mut first = true;
        for step in &self.steps {
            if let PlanStep::Layer(layer) = step {
                run.push(*layer);
                continue;
            }
            if !run.is_empty() {
                if !first {
                    f.write_str(",")?;
                }
                write_compressed(f, &run, ",")?;
                run.clear();
                first = false;
            }
            if !first {
                f.write_str(",")?;
            }
            write!(f, "{step}")?;
            first = false;
        }
        if !run.is_empty() {
            if !first {
                f.write_str(",")?;
            }
            write_compressed(f, &run, ",")?;
        }
        Ok(())
    }
}

/// Writes `layers` with runs of three or more consecutive layers (ascending
/// or descending) as `A-B`, the rest one by one, separated by `sep`.
fn write_compressed(f: &mut fmt::Formatter<'_>, layers: &[usize], sep: &str) -> fmt::Result {
    let mut i = 0;
    while i < layers.len() {
        let mut j = i;
        if let Some(&next) = layers.get(i + 1) {
            let step = |layer: usize, up: bool| {
                if up {
                    layer.checked_add(1)
                } else {
                    layer.checked_sub(1)
                }
            };
            let up = step(layers[i], true) == Some(next);
            if up || step(layers[i], false) == Some(next) {
                while j + 1 < layers.len() && step(layers[j], up) == Some(layers[j + 1]) {
                    j += 1;
                }
            }
        }
        if i > 0 {
            f.write_str(sep)?;
        }
        match j - i {
            0 => write!(f, "{}", layers[i])?,
            1 => write!(f, "{}{sep}{}", layers[i], layers[j])?,
            _ => write!(f, "{}-{}", layers[i], layers[j])?,
        }
        i = j + 1;
    }
    Ok(())
}

fn check_layer(layer: usize, n_layers: usize, at: PlanLocation) -> Result<(), PlanError> {
    if layer < n_layers {
        Ok(())
    } else {
        Err(PlanError::OutOfRange {
            layer,
            n_layers,
            at,
        })
    }
}

/// Accumulates canonical steps, checking every bound as it goes.
struct Builder {
    steps: Vec<PlanStep>,
    applications: usize,
    n_layers: usize,
}

impl Builder {
    fn new(n_layers: usize) -> Builder {
        Builder {
            steps: Vec::new(),
            applications: 0,
            n_layers,
        }
    }

    /// Reserves `count` more applications, or fails with
    /// [`PlanError::TooLong`] at `at`. Called before anything is expanded.
    fn reserve(&mut self, count: usize, at: PlanLocation) -> Result<(), PlanError> {
        match self.applications.checked_add(count) {
            Some(total) if total <= MAX_APPLICATIONS => {
                self.applications = total;
                Ok(())
            }
            _ => Err(PlanError::TooLong { at }),
        }
    }

    fn push_layer(&mut self, layer: usize, at: PlanLocation) -> Result<(), PlanError> {
        self.push_repeat(layer, 1, at)
    }

    /// `layer` `times` times (`times >= 1`), merged with a run of the same
    /// layer just before it.
    fn push_repeat(
        &mut self,
        layer: usize,
        times: usize,
        at: PlanLocation,
    ) -> Result<(), PlanError> {
        check_layer(layer, self.n_layers, at)?;
        let before = match self.steps.last() {
            Some(PlanStep::Layer(last)) if *last == layer => 1,
            Some(PlanStep::Repeat { layer: last, times }) if *last == layer => *times,
            _ => 0,
        };
        let total = before.saturating_add(times);
        if total > MAX_REPEAT {
            return Err(PlanError::RepeatTooLarge {
                layer,
                times: total,
                at,
            });
        }
        self.reserve(times, at)?;
        let step = if total == 1 {
            PlanStep::Layer(layer)
        } else {
            PlanStep::Repeat {
                layer,
                times: total,
            }
        };
        if before > 0 {
            if let Some(last) = self.steps.last_mut() {
                *last = step;
            }
        } else {
            self.steps.push(step);
        }
        Ok(())
    }

    /// Layers `from` to `to` (either order), one by one.
    fn push_span(&mut self, from: usize, to: usize, at: PlanLocation) -> Result<(), PlanError> {
        check_layer(from, self.n_layers, at)?;
        check_layer(to, self.n_layers, at)?;
        // Fail before expanding anything: the span alone may be huge.
        if from.abs_diff(to) >= MAX_APPLICATIONS - self.applications.min(MAX_APPLICATIONS) {
            return Err(PlanError::TooLong { at });
        }
        if from <= to {
            (from..=to).try_for_each(|layer| self.push_layer(layer, at))
        } else {
            (to..=from)
                .rev()
                .try_for_each(|layer| self.push_layer(layer, at))
        }
    }

    /// Every layer, in order.
    fn push_all(&mut self, at: PlanLocation) -> Result<(), PlanError> {
        match self.n_layers {
            0 => Ok(()),
            n => self.push_span(0, n - 1, at),
        }
    }

    /// A finished group; its applications are already reserved.
    fn push_group(&mut self, group: Group, merge: Merge, text: String) -> Result<(), PlanError> {
        if group.layers.len() < 2 {
            return Err(PlanError::GroupTooSmall { text, at: group.at });
        }
        self.steps.push(PlanStep::Parallel {
            layers: group.layers,
            merge,
        });
        Ok(())
    }

    fn finish(self) -> Plan {
        Plan { steps: self.steps }
    }
}

/// The members of a parallel group being read.
struct Group {
    layers: Vec<usize>,
    seen: BTreeSet<usize>,
    /// Where the group starts.
    at: PlanLocation,
}

impl Group {
    fn new(at: PlanLocation) -> Group {
        Group {
            layers: Vec::new(),
            seen: BTreeSet::new(),
            at,
        }
    }

    /// Adds `layer`, reserving its application in `plan`.
    fn push(
        &mut self,
        plan: &mut Builder,
        layer: usize,
        at: PlanLocation,
    ) -> Result<(), PlanError> {
        check_layer(layer, plan.n_layers, at)?;
        if !self.seen.insert(layer) {
            return Err(PlanError::DuplicateInGroup { layer, at });
        }
        plan.reserve(1, at)?;
        self.layers.push(layer);
        Ok(())
    }

    /// Adds layers `from` to `to` (either order).
    fn push_span(
        &mut self,
        plan: &mut Builder,
        from: usize,
        to: usize,
        at: PlanLocation,
    ) -> Result<(), PlanError> {
        check_layer(from, plan.n_layers, at)?;
        check_layer(to, plan.n_layers, at)?;
        if from.abs_diff(to) >= MAX_APPLICATIONS - plan.applications.min(MAX_APPLICATIONS) {
            return Err(PlanError::TooLong { at });
        }
        if from <= to {
            (from..=to).try_for_each(|layer| self.push(plan, layer, at))
        } else {
            (to..=from)
                .rev()
                .try_for_each(|layer| self.push(plan, layer, at))
        }
    }
}

/// A recursive-descent parser over the plan text; `pos` is a byte offset on
/// a character boundary.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
    plan: Builder,
}

/// What an item may start with, for messages.
const ITEM: &str = "a layer `N`, a range `A-B`, a repeat `NxK`, a group `(A|B)` or `all`";

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn at(&self) -> PlanLocation {
        PlanLocation::Byte(self.pos)
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if !c.is_whitespace() {
                break;
            }
            self.pos += c.len_utf8();
        }
    }

    /// The run of characters from `pos` that satisfy `pred`.
    fn run(&self, pred: impl Fn(char) -> bool) -> &str {
        let rest = &self.text[self.pos..];
        let end = rest.find(|c: char| !pred(c)).unwrap_or(rest.len());
        &rest[..end]
    }

    /// What is at `pos`, for an [`PlanError::Unexpected`].
    fn found(&self) -> String {
        match self.peek() {
            None => "end of the plan".to_string(),
            Some(c) if c.is_ascii_digit() => {
                format!("number `{}`", snippet(self.run(|c| c.is_ascii_digit())))
            }
            Some(c)
                if c.is_alphabetic() && self.run(char::is_alphanumeric).len() > c.len_utf8() =>
            {
                format!("word `{}`", snippet(self.run(char::is_alphanumeric)))
            }
            Some(c) => format!("character {c:?}"),
        }
    }

    fn unexpected(&self, expected: &'static str) -> PlanError {
        PlanError::Unexpected {
            found: self.found(),
            expected,
            at: self.at(),
        }
    }

    /// [`Parser::unexpected`] where a `)` closes no group.
    fn unexpected_outside_group(&self, expected: &'static str) -> PlanError {
        match self.peek() {
            Some(')') => PlanError::Unmatched { at: self.at() },
            _ => self.unexpected(expected),
        }
    }

    /// Reads a layer number that must be there and be below the layer count.
    fn layer(&mut self, expected: &'static str) -> Result<usize, PlanError> {
        let at = self.at();
        let layer = self.expect_number(expected)?;
        check_layer(layer, self.plan.n_layers, at)?;
        Ok(layer)
    }

    /// Reads a number if one starts at `pos`.
    fn number(&mut self) -> Result<Option<usize>, PlanError> {
        let digits = self.run(|c| c.is_ascii_digit());
        if digits.is_empty() {
            return Ok(None);
        }
        let value = digits.bytes().try_fold(0usize, |acc, d| {
            acc.checked_mul(10)?.checked_add(usize::from(d - b'0'))
        });
        let Some(value) = value else {
            return Err(PlanError::NumberTooLarge {
                text: snippet(digits),
                at: self.at(),
            });
        };
        self.pos += digits.len();
        Ok(Some(value))
    }

    /// Reads a number that must be there.
    fn expect_number(&mut self, expected: &'static str) -> Result<usize, PlanError> {
        self.number()?.ok_or_else(|| self.unexpected(expected))
    }

    /// `all` or `*` if one starts at `pos`.
    fn all(&mut self) -> bool {
        if self.peek() == Some('*') {
            self.pos += 1;
            return true;
        }
        if self.run(char::is_alphanumeric) == "all" {
            self.pos += 3;
            return true;
        }
        false
    }

    fn plan(&mut self) -> Result<(), PlanError> {
        loop {
            self.skip_ws();
            if matches!(self.peek(), None | Some(',')) {
                return Err(PlanError::EmptyItem { at: self.at() });
            }
            self.item()?;
            self.skip_ws();
            match self.peek() {
                None => return Ok(()),
                Some(',') => self.pos += 1,
                Some(_) => return Err(self.unexpected_outside_group("',' or the end of the plan")),
            }
        }
    }

    fn item(&mut self) -> Result<(), PlanError> {
        let at = self.at();
        let start = self.pos;
        if self.peek() == Some('(') {
            return self.group();
        }
        if self.all() {
            return self.plan.push_all(at);
        }
        let Some(first) = self.number()? else {
            return Err(self.unexpected_outside_group(ITEM));
        };
        check_layer(first, self.plan.n_layers, at)?;
        self.skip_ws();
        match self.peek() {
            Some('-') => {
                self.pos += 1;
                self.skip_ws();
                let last = self.layer("a layer number after '-'")?;
                self.plan.push_span(first, last, at)
            }
            Some('x') => {
                self.pos += 1;
                self.skip_ws();
                let times = self.expect_number("a repeat count after 'x'")?;
                if times == 0 {
                    return Err(PlanError::ZeroRepeat {
                        text: snippet(&self.text[start..self.pos]),
                        at,
                    });
                }
                self.plan.push_repeat(first, times, at)
            }
            _ => self.plan.push_layer(first, at),
        }
    }

    fn group(&mut self) -> Result<(), PlanError> {
        let open = self.at();
        let start = self.pos;
        self.pos += 1;
        let mut group = Group::new(open);
        loop {
            self.skip_ws();
            let at = self.at();
            match self.peek() {
                None => return Err(PlanError::Unclosed { at: open }),
                Some('(') => return Err(PlanError::NestedGroup { at }),
                Some(')') if group.layers.is_empty() => {
                    self.pos += 1;
                    break;
                }
                _ => {}
            }
            if self.all() {
                let last = self.plan.n_layers.checked_sub(1);
                if let Some(last) = last {
                    group.push_span(&mut self.plan, 0, last, at)?;
                }
            } else if let Some(first) = self.number()? {
                check_layer(first, self.plan.n_layers, at)?;
                self.skip_ws();
                if self.peek() == Some('-') {
                    self.pos += 1;
                    self.skip_ws();
                    let last = self.layer("a layer number after '-'")?;
                    group.push_span(&mut self.plan, first, last, at)?;
                } else {
                    group.push(&mut self.plan, first, at)?;
                }
            } else {
                return Err(self.unexpected("a layer `N` or a range `A-B` inside '(...)'"));
            }
            self.skip_ws();
            match self.peek() {
                Some('|') => self.pos += 1,
                Some(')') => {
                    self.pos += 1;
                    break;
                }
                None => return Err(PlanError::Unclosed { at: open }),
                Some(_) => {
                    return Err(self.unexpected("'|' between the layers of a group, or ')'"));
                }
            }
        }
        let text = snippet(&self.text[start..self.pos]);
        let merge = self.merge()?;
        self.plan.push_group(group, merge, text)
    }

    /// An optional `/sum` or `/mean` after a group.
    fn merge(&mut self) -> Result<Merge, PlanError> {
        let before = self.pos;
        self.skip_ws();
        if self.peek() != Some('/') {
            self.pos = before;
            return Ok(Merge::SumUpdates);
        }
        self.pos += 1;
        self.skip_ws();
        let at = self.at();
        let name = self.run(char::is_alphanumeric);
        let merge = match name {
            "sum" => Merge::SumUpdates,
            "mean" => Merge::Mean,
            "" => return Err(self.unexpected("`sum` or `mean` after '/'")),
            other => {
                return Err(PlanError::UnknownMerge {
                    name: snippet(other),
                    at,
                })
            }
        };
        self.pos += name.len();
        Ok(merge)
    }
}
