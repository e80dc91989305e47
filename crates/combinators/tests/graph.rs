//! Rendering model graphs: snapshots of the text and DOT forms, properties of
//! the SVG and Mermaid forms.
//!
//! Snapshots live in `tests/snapshots/`; after an intended change, rewrite them
//! with `UPDATE_SNAPSHOTS=1 cargo test -p patchbay-combinators --test graph`
//! and review the diff.

use std::path::PathBuf;

use patchbay_combinators::graph::{render, GraphFormat};
use patchbay_combinators::{
    residual, AddHalves, Gate, Identity, Layer, LayerExt, Loop, Node, Parallel, Stack, Sum,
};

// ---------------------------------------------------------------------------
// Trees.

fn series(dim_in: usize, dim_out: usize, children: Vec<Node>) -> Node {
    Node::wiring("Series", dim_in, dim_out, children)
}

fn linear(name: &str, i: usize, o: usize) -> Node {
    Node::leaf(name, i, o, (i * o) as u64).with_detail("q4_0")
}

fn rms(dim: usize) -> Node {
    Node::leaf("RmsNorm", dim, dim, dim as u64).with_detail("eps=1e-5")
}

/// Attention as one leaf.
fn attention_leaf(dim: usize, detail: &str) -> Node {
    Node::leaf("Attention", dim, dim, (4 * dim * dim) as u64).with_detail(detail)
}

/// Attention as today's blocks describe it: a node listing its projections.
fn attention_parts(dim: usize, kv: usize) -> Node {
    Node::wiring(
        "Attention",
        dim,
        dim,
        vec![
            linear("attn_q", dim, dim),
            linear("attn_k", dim, kv),
            linear("attn_v", dim, kv),
            linear("attn_output", dim, dim),
        ],
    )
    .with_detail("heads=9 kv=3 head_dim=64")
}

/// Attention composed of parts, as it is planned to describe itself.
fn attention_composed(dim: usize, kv: usize) -> Node {
    let qkv = dim + 2 * kv;
    Node::wiring(
        "Attention",
        dim,
        dim,
        vec![
            Node::wiring(
                "Parallel",
                dim,
                qkv,
                vec![
                    linear("attn_q", dim, dim),
                    linear("attn_k", dim, kv),
                    linear("attn_v", dim, kv),
                ],
            ),
            Node::leaf("QkNorm", qkv, qkv, 128),
            Node::leaf("Rope", qkv, qkv, 0).with_detail("theta=1e4"),
            Node::leaf("Attend", qkv, dim, 0).with_detail("causal"),
            linear("attn_output", dim, dim),
        ],
    )
}

/// A pre-norm Llama block around the attention `attn`.
fn llama_block(dim: usize, hidden: usize, attn: Node) -> Node {
    let swiglu = series(
        dim,
        dim,
        vec![
            Node::wiring(
                "Gate",
                dim,
                hidden,
                vec![
                    series(
                        dim,
                        hidden,
                        vec![
                            linear("ffn_gate", dim, hidden),
                            Node::leaf("Silu", hidden, hidden, 0),
                        ],
                    ),
                    linear("ffn_up", dim, hidden),
                ],
            ),
            linear("ffn_down", hidden, dim),
        ],
    );
    series(
        dim,
        dim,
        vec![
            Node::wiring(
                "Residual",
                dim,
                dim,
                vec![series(dim, dim, vec![rms(dim), attn])],
            ),
            Node::wiring(
                "Residual",
                dim,
                dim,
                vec![series(dim, dim, vec![rms(dim), swiglu])],
            ),
        ],
    )
}

fn llama_with(dim: usize, vocab: usize, layers: Vec<Node>) -> Node {
    series(
        1,
        vocab,
        vec![
            Node::leaf("Embedding", 1, dim, (vocab * dim) as u64)
                .with_detail(format!("vocab={vocab} q4_0")),
            Node::wiring("Stack", dim, dim, layers.clone())
                .with_detail(format!("x{}", layers.len())),
            rms(dim),
            linear("LmHead", dim, vocab),
        ],
    )
}

/// The brief's fake Llama: three identical blocks.
fn fake_llama() -> Node {
    let block = llama_block(64, 172, attention_leaf(64, "heads=4 kv=2 head_dim=16"));
    llama_with(64, 512, vec![block; 3])
}

/// A SmolLM2-135M-sized Llama with 30 blocks, attention as its projections.
fn smol_llama() -> Node {
    let block = llama_block(576, 1536, attention_parts(576, 192));
    llama_with(576, 49152, vec![block; 30])
}

/// A re-wired plan: local and global attention alternate, one entry is a
/// weight-tied loop, one runs two blocks in parallel and sums them.
fn rewired_plan() -> Node {
    let dim = 32;
    // A compact block (the MLP as one leaf) keeps the snapshot readable.
    let block = |attn: Node| {
        series(
            dim,
            dim,
            vec![
                Node::wiring(
                    "Residual",
                    dim,
                    dim,
                    vec![series(dim, dim, vec![rms(dim), attn])],
                ),
                Node::wiring(
                    "Residual",
                    dim,
                    dim,
                    vec![series(
                        dim,
                        dim,
                        vec![rms(dim), Node::leaf("Mlp", dim, dim, 6144)],
                    )],
                ),
            ],
        )
    };
    let local = block(attention_leaf(dim, "heads=2 window=16"));
    let global = block(attention_leaf(dim, "heads=2"));
    let looped = Node::wiring("Loop", dim, dim, vec![global.clone()]).with_detail("repeat x3");
    let both = Node::wiring("Sum", dim, dim, vec![local.clone(), global.clone()]);
    let layers = vec![
        local.clone(),
        local.clone(),
        global.clone(),
        local.clone(),
        looped,
        both,
        global.clone(),
        global,
    ];
    Node::wiring("Stack", dim, dim, layers).with_detail("x8")
}

/// A tree built from the real combinators.
fn combinator_tree() -> Node {
    let sum_of_halves = Parallel::new(Identity::new(4), Identity::new(4)).then(AddHalves::new(4));
    let gated = Loop::repeat(Gate::new(Identity::new(4), Identity::new(4)), 3);
    let stack = Stack::new(vec![residual(Identity::new(4)); 3]);
    let sum = Sum::new(
        Identity::new(4).then(Identity::new(4)),
        residual(Identity::new(4)),
    );
    sum_of_halves.then(gated).then(stack).then(sum).describe()
}

// ---------------------------------------------------------------------------
// Helpers.

fn leaf_names(n: &Node, out: &mut Vec<String>) {
    if n.children.is_empty() {
        out.push(n.name.clone());
    }
    for c in &n.children {
        leaf_names(c, out);
    }
}

/// Compares `actual` with `tests/snapshots/<name>`, or rewrites the file when
/// `UPDATE_SNAPSHOTS=1`.
fn snapshot(name: &str, actual: &str) {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "snapshots", name]
        .iter()
        .collect();
    if std::env::var("UPDATE_SNAPSHOTS").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read snapshot {}: {e}\n(run with UPDATE_SNAPSHOTS=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "{name} differs from its snapshot (- expected, + actual):\n{}\n\
             (run with UPDATE_SNAPSHOTS=1 to accept the new output)",
            diff(&expected, actual)
        );
    }
}

/// A line diff (longest common subsequence) with two lines of context.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] > lcs[i + 1][j]) {
            ops.push(('+', b[j]));
            j += 1;
        } else {
            ops.push(('-', a[i]));
            i += 1;
        }
    }
    let near = |k: usize| {
        ops[k.saturating_sub(2)..(k + 3).min(ops.len())]
            .iter()
            .any(|(op, _)| *op != ' ')
    };
    let mut out = String::new();
    let mut skipped = false;
    for (k, (op, line)) in ops.iter().enumerate() {
        if near(k) {
            if skipped {
                out.push_str("  ...\n");
                skipped = false;
            }
            out.push_str(&format!("{op} {line}\n"));
        } else {
            skipped = true;
        }
    }
    if expected.ends_with('\n') != actual.ends_with('\n') {
        out.push_str("(the final newline differs)\n");
    }
    out
}

fn parse_svg(svg: &str) -> roxmltree::Document<'_> {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("SVG is not XML: {e}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    for attr in ["viewBox", "width", "height"] {
        assert!(
            root.attribute(attr).is_some(),
            "the svg element has no {attr}"
        );
    }
    doc
}

/// Every text of an SVG, joined by newlines.
fn svg_texts(doc: &roxmltree::Document<'_>) -> String {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| {
            n.descendants()
                .filter(|d| d.is_text())
                .filter_map(|d| d.text())
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, Clone, Copy)]
struct Rect {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

impl Rect {
    fn overlaps(&self, o: &Rect) -> bool {
        self.x < o.x + o.w && o.x < self.x + self.w && self.y < o.y + o.h && o.y < self.y + self.h
    }
    fn inside(&self, o: &Rect) -> bool {
        self.x >= o.x
            && self.y >= o.y
            && self.x + self.w <= o.x + o.w
            && self.y + self.h <= o.y + o.h
    }
}

fn rects(doc: &roxmltree::Document<'_>, rx: &str) -> Vec<Rect> {
    let f = |n: &roxmltree::Node<'_, '_>, a: &str| n.attribute(a).unwrap().parse::<f64>().unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("rx") == Some(rx))
        .map(|n| Rect {
            x: f(&n, "x"),
            y: f(&n, "y"),
            w: f(&n, "width"),
            h: f(&n, "height"),
        })
        .collect()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

// ---------------------------------------------------------------------------
// Snapshots.

#[test]
fn text_snapshot_of_the_fake_llama() {
    snapshot("fake_llama.txt", &render(&fake_llama(), GraphFormat::Text));
}

#[test]
fn dot_snapshot_of_the_fake_llama() {
    snapshot("fake_llama.dot", &render(&fake_llama(), GraphFormat::Dot));
}

#[test]
fn text_snapshot_of_a_rewired_plan() {
    snapshot(
        "rewired_plan.txt",
        &render(&rewired_plan(), GraphFormat::Text),
    );
}

#[test]
fn dot_snapshot_of_a_rewired_plan() {
    snapshot(
        "rewired_plan.dot",
        &render(&rewired_plan(), GraphFormat::Dot),
    );
}

#[test]
fn text_snapshot_of_real_combinators() {
    snapshot(
        "combinators.txt",
        &render(&combinator_tree(), GraphFormat::Text),
    );
}

#[test]
fn dot_snapshot_of_real_combinators() {
    snapshot(
        "combinators.dot",
        &render(&combinator_tree(), GraphFormat::Dot),
    );
}

#[test]
fn text_snapshot_of_composed_attention() {
    let block = llama_block(64, 172, attention_composed(64, 32));
    snapshot("composed_attention.txt", &render(&block, GraphFormat::Text));
}

// ---------------------------------------------------------------------------
// Properties.

#[test]
fn formats_parse_by_name_and_reject_others() {
    for f in GraphFormat::ALL {
        assert_eq!(f.name().parse::<GraphFormat>(), Ok(f));
        assert_eq!(f.name().to_uppercase().parse::<GraphFormat>(), Ok(f));
        assert_eq!(f.to_string(), f.name());
    }
    assert_eq!("mmd".parse::<GraphFormat>(), Ok(GraphFormat::Mermaid));
    let err = "png".parse::<GraphFormat>().unwrap_err().to_string();
    assert!(err.contains("\"png\""), "{err}");
    for name in ["text", "dot", "svg", "mermaid"] {
        assert!(err.contains(name), "the error does not list {name}: {err}");
    }
}

#[test]
fn svg_is_a_standalone_xml_document() {
    for tree in [
        fake_llama(),
        smol_llama(),
        rewired_plan(),
        combinator_tree(),
    ] {
        let svg = render(&tree, GraphFormat::Svg);
        let doc = parse_svg(&svg);
        // The viewBox covers exactly the declared size.
        let root = doc.root_element();
        let vb: Vec<f64> = root
            .attribute("viewBox")
            .unwrap()
            .split(' ')
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(vb[0..2], [0.0, 0.0]);
        assert_eq!(
            root.attribute("width").unwrap().parse::<f64>().unwrap(),
            vb[2]
        );
        assert_eq!(
            root.attribute("height").unwrap().parse::<f64>().unwrap(),
            vb[3]
        );
        // Every arrow marker used is defined.
        for n in doc.descendants() {
            if let Some(m) = n.attribute("marker-end") {
                let id = m.trim_start_matches("url(#").trim_end_matches(')');
                assert!(
                    doc.descendants().any(|d| d.attribute("id") == Some(id)),
                    "marker {id} is not defined"
                );
            }
        }
    }
}

#[test]
fn every_leaf_name_appears_in_every_format() {
    for tree in [
        fake_llama(),
        smol_llama(),
        rewired_plan(),
        combinator_tree(),
    ] {
        let mut names = Vec::new();
        leaf_names(&tree, &mut names);
        let svg = render(&tree, GraphFormat::Svg);
        let texts = svg_texts(&parse_svg(&svg));
        for format in [GraphFormat::Text, GraphFormat::Dot, GraphFormat::Mermaid] {
            let out = render(&tree, format);
            for name in &names {
                assert!(out.contains(name.as_str()), "{format} lacks {name}");
            }
        }
        for name in &names {
            assert!(texts.contains(name.as_str()), "svg lacks {name}");
        }
    }
}

#[test]
fn svg_escapes_text() {
    let tree = series(
        2,
        2,
        vec![Node::leaf("Odd<&>\"'", 2, 2, 0).with_detail("a<b && c>d\u{1}")],
    );
    let svg = render(&tree, GraphFormat::Svg);
    let texts = svg_texts(&parse_svg(&svg));
    assert!(texts.contains("Odd<&>\"'"), "{texts}");
    assert!(texts.contains("a<b && c>d"), "{texts}");
    // DOT and Mermaid quote what would end their labels.
    let dot = render(&tree, GraphFormat::Dot);
    assert!(dot.contains(r#"Odd<&>\"'"#), "{dot}");
    let mermaid = render(&tree, GraphFormat::Mermaid);
    assert!(!mermaid.contains("Odd<&>\""), "{mermaid}");
}

#[test]
fn identical_stack_layers_collapse_to_one_copy() {
    let tree = fake_llama();
    let text = render(&tree, GraphFormat::Text);
    assert!(text.contains("Stack ×3 64→64"), "{text}");
    assert!(text.contains("×3 Series 64→64"), "{text}");
    assert!(text.contains("params each"), "{text}");
    // Two norms in the one drawn block, one at the end.
    assert_eq!(count(&text, "RmsNorm"), 3, "{text}");
    assert_eq!(count(&text, "ffn_down"), 1, "{text}");

    let dot = render(&tree, GraphFormat::Dot);
    assert_eq!(count(&dot, "label=\"RmsNorm"), 3, "{dot}");
    assert_eq!(count(&dot, "label=\"Attention"), 1, "{dot}");
    assert!(dot.contains("Stack ×3"), "{dot}");

    let mermaid = render(&tree, GraphFormat::Mermaid);
    assert_eq!(count(&mermaid, "[\"RmsNorm"), 3, "{mermaid}");

    let svg = render(&tree, GraphFormat::Svg);
    let texts = svg_texts(&parse_svg(&svg));
    assert_eq!(count(&texts, "RmsNorm"), 3, "{texts}");
    assert!(texts.contains("Stack ×3"), "{texts}");

    // 30 layers: still drawn once.
    let smol = render(&smol_llama(), GraphFormat::Text);
    assert!(smol.contains("Stack ×30"), "{smol}");
    assert_eq!(count(&smol, "attn_q"), 1, "{smol}");
}

#[test]
fn different_stack_layers_are_not_merged() {
    let dim = 16;
    let local = llama_block(dim, 32, attention_leaf(dim, "window=8"));
    let global = llama_block(dim, 32, attention_leaf(dim, "global"));
    // Alternating: four runs of one.
    let alternating = Node::wiring(
        "Stack",
        dim,
        dim,
        vec![local.clone(), global.clone(), local.clone(), global.clone()],
    )
    .with_detail("x4");
    let text = render(&alternating, GraphFormat::Text);
    assert_eq!(count(&text, "×1 Series"), 4, "{text}");
    assert_eq!(count(&text, "[window=8]"), 2, "{text}");
    assert_eq!(count(&text, "[global]"), 2, "{text}");
    let dot = render(&alternating, GraphFormat::Dot);
    assert_eq!(count(&dot, "label=\"Attention"), 4, "{dot}");

    // Runs: three then one.
    let runs = Node::wiring(
        "Stack",
        dim,
        dim,
        vec![local.clone(), local.clone(), local, global],
    )
    .with_detail("x4");
    let text = render(&runs, GraphFormat::Text);
    assert!(text.contains("×3 Series"), "{text}");
    assert!(text.contains("×1 Series"), "{text}");
    assert_eq!(count(&text, "[window=8]"), 1, "{text}");
    let svg = render(&runs, GraphFormat::Svg);
    let texts = svg_texts(&parse_svg(&svg));
    assert!(texts.contains("×3") && texts.contains("×1"), "{texts}");
    assert_eq!(count(&texts, "window=8"), 1, "{texts}");

    // A difference deep down (one parameter count) is a difference.
    let mut odd = llama_block(dim, 32, attention_leaf(dim, "global"));
    odd.children[0].children[0].children[0].own_params += 1;
    let near = Node::wiring(
        "Stack",
        dim,
        dim,
        vec![llama_block(dim, 32, attention_leaf(dim, "global")), odd],
    );
    let text = render(&near, GraphFormat::Text);
    assert_eq!(count(&text, "×1 Series"), 2, "{text}");
}

#[test]
fn sum_and_gate_merges_look_different() {
    let dim = 8;
    let branches = || vec![linear("a", dim, dim), linear("b", dim, dim)];
    let sum = Node::wiring("Sum", dim, dim, branches());
    let gate = Node::wiring("Gate", dim, dim, branches());
    let par = Node::wiring("Parallel", dim, 2 * dim, branches());

    let text = |n: &Node| render(n, GraphFormat::Text);
    assert!(text(&sum).contains("(+) add"));
    assert!(text(&gate).contains("(×) multiply"));
    assert!(text(&par).contains("(‖) concat"));

    // DOT: a circle with its symbol, in its own colour.
    let merge_attrs = |n: &Node| -> String {
        let dot = render(n, GraphFormat::Dot);
        dot.lines()
            .find(|l| l.contains("shape=circle"))
            .unwrap_or_else(|| panic!("no merge node in {dot}"))
            .to_string()
    };
    let (s, g, p) = (merge_attrs(&sum), merge_attrs(&gate), merge_attrs(&par));
    assert!(s.contains("label=\"+\""), "{s}");
    assert!(g.contains("label=\"×\""), "{g}");
    assert!(p.contains("label=\"‖\""), "{p}");
    let colour = |l: &str| {
        l.split("fillcolor=")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_string()
    };
    assert_ne!(colour(&s), colour(&g));
    assert_ne!(colour(&s), colour(&p));
    assert_ne!(colour(&g), colour(&p));

    // SVG: a merge circle with its symbol, in its own colour.
    let svg_merge = |n: &Node| -> (String, String) {
        let svg = render(n, GraphFormat::Svg);
        let doc = parse_svg(&svg);
        let circle = doc
            .descendants()
            .find(|d| d.has_tag_name("circle") && d.attribute("r") == Some("11"))
            .expect("a merge circle");
        let symbol = circle
            .next_sibling_element()
            .unwrap()
            .text()
            .unwrap()
            .to_string();
        (symbol, circle.attribute("fill").unwrap().to_string())
    };
    let (ss, sc) = svg_merge(&sum);
    let (gs, gc) = svg_merge(&gate);
    assert_eq!(ss, "+");
    assert_eq!(gs, "×");
    assert_ne!(sc, gc);

    // A residual is a sum with a skip edge.
    let res = Node::wiring("Residual", dim, dim, vec![linear("f", dim, dim)]);
    assert_eq!(svg_merge(&res).0, "+");
    let dot = render(&res, GraphFormat::Dot);
    assert_eq!(count(&dot, "label=\"skip\""), 1, "{dot}");
    assert!(text(&res).contains("┄ skip"));
}

#[test]
fn loops_have_a_labelled_back_edge() {
    let body = series(8, 8, vec![linear("step", 8, 8)]);
    let tree = Node::wiring("Loop", 8, 8, vec![body]).with_detail("autoregressive, 64 steps");
    let dot = render(&tree, GraphFormat::Dot);
    assert!(
        dot.contains("label=\"autoregressive, 64 steps\", constraint=false"),
        "{dot}"
    );
    assert!(dot.contains("subgraph cluster_0"), "{dot}");
    let mermaid = render(&tree, GraphFormat::Mermaid);
    assert!(
        mermaid.contains("-.->|\"autoregressive, 64 steps\"|"),
        "{mermaid}"
    );
    let svg = render(&tree, GraphFormat::Svg);
    let doc = parse_svg(&svg);
    assert!(svg_texts(&doc).contains("↺ autoregressive, 64 steps"));
    assert!(doc
        .descendants()
        .any(|n| n.attribute("marker-end") == Some("url(#arrow-loop)")));
    assert!(
        render(&tree, GraphFormat::Text).contains("↺ back to the input: autoregressive, 64 steps")
    );
}

#[test]
fn mermaid_is_a_top_down_flowchart_with_subgraphs() {
    let out = render(&fake_llama(), GraphFormat::Mermaid);
    assert!(out.starts_with("flowchart TD\n"), "{out}");
    assert_eq!(count(&out, "subgraph "), 1, "{out}");
    assert_eq!(count(&out, "subgraph "), count(&out, "\n  end\n"), "{out}");
    assert!(
        out.contains("((\"+\"))") && out.contains("((\"×\"))"),
        "{out}"
    );
    // Two residuals, each with one skip edge.
    assert_eq!(count(&out, "-.->|\"skip\"|"), 2, "{out}");
    // Forks are contracted: no node is declared without a label.
    assert!(!out.contains("(( ))"), "{out}");
}

#[test]
fn parameter_counts_are_human_readable() {
    let leaf = |p: u64| render(&Node::leaf("w", 4, 4, p), GraphFormat::Text);
    assert_eq!(leaf(0), "w 4→4\n");
    assert_eq!(leaf(576), "w 4→4 · 576 params\n");
    assert_eq!(leaf(34_500), "w 4→4 · 34.5K params\n");
    assert_eq!(leaf(1_234_567), "w 4→4 · 1.2M params\n");
    assert_eq!(leaf(999_960), "w 4→4 · 1.0M params\n");
    assert_eq!(leaf(7_000_000_000), "w 4→4 · 7.0B params\n");
}

#[test]
fn svg_boxes_do_not_overlap_and_stay_inside_their_frames() {
    for tree in [
        fake_llama(),
        smol_llama(),
        rewired_plan(),
        combinator_tree(),
    ] {
        let svg = render(&tree, GraphFormat::Svg);
        let doc = parse_svg(&svg);
        let root = doc.root_element();
        let page = Rect {
            x: 0.0,
            y: 0.0,
            w: root.attribute("width").unwrap().parse().unwrap(),
            h: root.attribute("height").unwrap().parse().unwrap(),
        };
        let blocks = rects(&doc, "6");
        let frames = rects(&doc, "10");
        assert!(!blocks.is_empty());
        for (i, a) in blocks.iter().enumerate() {
            assert!(a.inside(&page), "{a:?} is off the page");
            for b in &blocks[i + 1..] {
                assert!(!a.overlaps(b), "{a:?} overlaps {b:?}");
            }
        }
        // Frames nest or are disjoint, and every block is in each frame it touches.
        for (i, f) in frames.iter().enumerate() {
            assert!(f.inside(&page), "{f:?} is off the page");
            for g in &frames[i + 1..] {
                assert!(
                    !f.overlaps(g) || f.inside(g) || g.inside(f),
                    "frames {f:?} and {g:?} cross"
                );
            }
            for b in &blocks {
                assert!(!b.overlaps(f) || b.inside(f), "{b:?} crosses frame {f:?}");
            }
        }
        // Every text lies on the page.
        for t in doc.descendants().filter(|n| n.has_tag_name("text")) {
            let x: f64 = t.attribute("x").unwrap().parse().unwrap();
            let y: f64 = t.attribute("y").unwrap().parse().unwrap();
            assert!(x >= 0.0 && x <= page.w && y >= 0.0 && y <= page.h);
        }
    }
}

/// When Graphviz is installed, it must accept the DOT output.
#[test]
fn graphviz_accepts_the_dot_output() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    for tree in [
        fake_llama(),
        smol_llama(),
        rewired_plan(),
        combinator_tree(),
    ] {
        let dot = render(&tree, GraphFormat::Dot);
        let child = Command::new("dot")
            .arg("-Tsvg")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("graphviz `dot` is not installed: DOT syntax not checked");
            return;
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(dot.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "dot rejected:\n{stderr}\n{dot}"
        );
    }
}

/// Writes every format of the example trees to `$GRAPH_EXAMPLES_DIR` when it
/// is set, for looking at them.
#[test]
fn write_examples_when_asked() {
    let Ok(dir) = std::env::var("GRAPH_EXAMPLES_DIR") else {
        return;
    };
    let composed = llama_with(
        64,
        512,
        vec![llama_block(64, 172, attention_composed(64, 32)); 4],
    );
    for (name, tree) in [
        ("fake_llama", fake_llama()),
        ("smol_llama", smol_llama()),
        ("rewired_plan", rewired_plan()),
        ("combinators", combinator_tree()),
        ("composed_attention", composed),
    ] {
        for f in GraphFormat::ALL {
            let path = PathBuf::from(&dir).join(format!("{name}.{}", f.extension()));
            std::fs::write(path, render(&tree, f)).unwrap();
        }
    }
    let odd = Node::wiring("Odd", 4, 4, degenerate_trees());
    std::fs::write(
        PathBuf::from(&dir).join("degenerate.svg"),
        render(&odd, GraphFormat::Svg),
    )
    .unwrap();
}

/// Empty combinators, lonely leaves, nested composites.
fn degenerate_trees() -> Vec<Node> {
    let empty = |name: &str| Node::wiring(name, 4, 4, vec![]);
    vec![
        empty("Series"),
        empty("Stack").with_detail("x0"),
        empty("Loop"),
        empty("Parallel"),
        empty("Sum"),
        empty("Residual"),
        empty("Gate"),
        Node::leaf("Lonely", 4, 4, 16),
        series(4, 4, vec![empty("Stack"), empty("Loop"), empty("Residual")]),
        Node::wiring(
            "Parallel",
            4,
            12,
            vec![linear("a", 4, 4), linear("b", 4, 4), linear("c", 4, 4)],
        ),
        Node::wiring(
            "Outer",
            4,
            4,
            vec![Node::wiring("Inner", 4, 4, vec![empty("Series")])],
        ),
    ]
}

#[test]
fn degenerate_trees_render() {
    for tree in degenerate_trees() {
        for f in GraphFormat::ALL {
            let out = render(&tree, f);
            assert!(!out.is_empty());
            if f == GraphFormat::Svg {
                parse_svg(&out);
            }
        }
        let text = render(&tree, GraphFormat::Text);
        assert!(text.starts_with(&tree.name), "{text}");
        let dot = render(&tree, GraphFormat::Dot);
        assert!(dot.contains("n0 -> "), "the input is not connected:\n{dot}");
    }
}
