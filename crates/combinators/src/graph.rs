//! Pictures of a model's graph, drawn from the layers' self-descriptions.
//!
//! [`render`] turns a [`Node`] tree (what [`Layer::describe`](crate::Layer::describe)
//! returns) into an indented text tree, Graphviz DOT, Mermaid or a standalone
//! SVG laid out in-process. Only the combinator names drive the drawing, so any
//! tree renders:
//!
//! | node | drawn as |
//! |---|---|
//! | `Series` | its children one after the other |
//! | `Parallel` | a fork into side-by-side branches, joined by a `‖` (concat) merge |
//! | `Sum` | a fork into branches joined by a `+` (add) merge |
//! | `Residual` | its body, with a dashed skip edge around it into a `+` merge |
//! | `Gate` | a fork into branches joined by a `×` (multiply) merge |
//! | `Stack` | a frame around its layers; runs of identical layers are drawn once with a count (`×30`) |
//! | `Loop` | a frame around its body with a back edge labelled with the loop's detail |
//! | any other node with children | a block listing its parts when they are all leaves, else a dashed frame around them in series |
//! | any other leaf | a box coloured by kind (norm, projection, attention, activation, embedding/head) |
//!
//! Every box shows its shape (`in→out`) and parameter count (`1.2M`).

use std::fmt::{self, Write as _};
use std::str::FromStr;

use crate::Node;

/// The output formats of [`render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GraphFormat {
    /// An indented tree, one node a line, with merges and collapsed stacks.
    Text,
    /// Graphviz DOT (`dot -Tsvg`), with clusters for stacks and loops.
    Dot,
    /// A standalone SVG image, laid out without Graphviz.
    Svg,
    /// A Mermaid `flowchart TD` with subgraphs.
    Mermaid,
}

impl GraphFormat {
    /// Every format, in the order of the error message.
    pub const ALL: [GraphFormat; 4] = [
        GraphFormat::Text,
        GraphFormat::Dot,
        GraphFormat::Svg,
        GraphFormat::Mermaid,
    ];

    /// The name [`FromStr`] accepts (`text`, `dot`, `svg`, `mermaid`).
    pub fn name(self) -> &'static str {
        match self {
            GraphFormat::Text => "text",
            GraphFormat::Dot => "dot",
            GraphFormat::Svg => "svg",
            GraphFormat::Mermaid => "mermaid",
        }
    }

    /// The usual file extension (`txt`, `dot`, `svg`, `mmd`).
    pub fn extension(self) -> &'static str {
        match self {
            GraphFormat::Text => "txt",
            GraphFormat::Dot => "dot",
            GraphFormat::Svg => "svg",
            GraphFormat::Mermaid => "mmd",
        }
    }
}

impl fmt::Display for GraphFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A graph format name that [`GraphFormat::from_str`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown graph format {found:?}: expected one of text, dot, svg, mermaid")]
pub struct UnknownGraphFormat {
    /// The name given.
    pub found: String,
}

impl FromStr for GraphFormat {
    type Err = UnknownGraphFormat;

    /// Parses a format name, ignoring case; also accepts the aliases `txt`,
    /// `tree`, `gv`, `graphviz` and `mmd`.
    fn from_str(s: &str) -> Result<GraphFormat, UnknownGraphFormat> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" | "txt" | "tree" => Ok(GraphFormat::Text),
            "dot" | "gv" | "graphviz" => Ok(GraphFormat::Dot),
            "svg" => Ok(GraphFormat::Svg),
            "mermaid" | "mmd" => Ok(GraphFormat::Mermaid),
            _ => Err(UnknownGraphFormat {
                found: s.to_string(),
            }),
        }
    }
}

/// Renders a model's self-description in `format`.
///
/// Stacks of identical layers are drawn once with a count, runs of identical
/// consecutive layers are grouped (`×5` then `×1`), forks and merges are drawn
/// explicitly (`+` for a sum or residual, `×` for a gate, `‖` for the
/// concatenation of a parallel fork), and loops get a back edge labelled with
/// their detail.
///
/// ```
/// use patchbay_combinators::graph::{render, GraphFormat};
/// use patchbay_combinators::{residual, Identity, Layer, Stack};
///
/// let model = Stack::new(vec![residual(Identity::new(8)), residual(Identity::new(8))]);
/// let node = model.describe();
///
/// let text = render(&node, GraphFormat::Text);
/// assert!(text.starts_with("Stack ×2 8→8"));
/// assert!(text.contains("×2 Residual 8→8")); // the two layers drawn once
/// assert!(text.contains("(+) add"));
///
/// let svg = render(&node, "svg".parse().unwrap());
/// assert!(svg.starts_with("<svg"));
/// assert!("png".parse::<GraphFormat>().is_err());
/// ```
pub fn render(node: &Node, format: GraphFormat) -> String {
    match format {
        GraphFormat::Text => text(node),
        GraphFormat::Dot => Flow::from_tree(node).dot(),
        GraphFormat::Mermaid => Flow::from_tree(node).mermaid(),
        GraphFormat::Svg => svg(node),
    }
}

// ---------------------------------------------------------------------------
// Reading a tree: roles, kinds, labels.

/// How a node is drawn, from its name alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Series,
    Parallel,
    Sum,
    Residual,
    Gate,
    Stack,
    Loop,
    /// A node without children.
    Leaf,
    /// A non-combinator node whose children are all leaves (today's
    /// `Attention` with its projections): one block listing its parts, since
    /// the tree does not say how the parts are wired.
    Parts,
    /// A non-combinator node with structured children: a frame around them in
    /// series.
    Frame,
}

const COMBINATORS: [&str; 7] = [
    "Series", "Parallel", "Sum", "Residual", "Gate", "Stack", "Loop",
];

fn role(n: &Node) -> Role {
    match n.name.as_str() {
        "Series" => Role::Series,
        "Parallel" => Role::Parallel,
        "Sum" => Role::Sum,
        "Residual" => Role::Residual,
        "Gate" => Role::Gate,
        "Stack" => Role::Stack,
        "Loop" => Role::Loop,
        _ if n.children.is_empty() => Role::Leaf,
        _ if n
            .children
            .iter()
            .all(|c| c.children.is_empty() && !COMBINATORS.contains(&c.name.as_str())) =>
        {
            Role::Parts
        }
        _ => Role::Frame,
    }
}

/// The kind of a block, for its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Norm,
    Linear,
    Attention,
    Activation,
    EmbedHead,
    Other,
}

impl Kind {
    fn of(name: &str) -> Kind {
        let l = name.to_ascii_lowercase();
        let has = |words: &[&str]| words.iter().any(|w| l.contains(w));
        if has(&["norm"]) {
            Kind::Norm
        } else if has(&["attention", "attend", "rope", "softmax"]) {
            Kind::Attention
        } else if has(&["embed", "head", "sampler", "unembed"]) {
            Kind::EmbedHead
        } else if has(&["linear", "proj", "dense", "qkv"])
            || l.starts_with("attn_")
            || l.starts_with("ffn_")
            || l.starts_with("mlp_")
            || (l.starts_with('w') && l.len() <= 3)
        {
            Kind::Linear
        } else if has(&[
            "silu",
            "gelu",
            "relu",
            "swish",
            "tanh",
            "sigmoid",
            "softplus",
            "activation",
        ]) {
            Kind::Activation
        } else {
            Kind::Other
        }
    }

    /// Fill and stroke colours.
    fn colours(self) -> (&'static str, &'static str) {
        match self {
            Kind::Norm => ("#fef9c3", "#ca8a04"),
            Kind::Linear => ("#dbeafe", "#2563eb"),
            Kind::Attention => ("#ede9fe", "#7c3aed"),
            Kind::Activation => ("#dcfce7", "#16a34a"),
            Kind::EmbedHead => ("#ffe4e6", "#e11d48"),
            Kind::Other => ("#f1f5f9", "#64748b"),
        }
    }

    fn class(self) -> &'static str {
        match self {
            Kind::Norm => "norm",
            Kind::Linear => "linear",
            Kind::Attention => "attention",
            Kind::Activation => "activation",
            Kind::EmbedHead => "embedhead",
            Kind::Other => "other",
        }
    }
}

/// The merge closing a fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Merge {
    Add,
    Mul,
    Concat,
}

impl Merge {
    fn symbol(self) -> &'static str {
        match self {
            Merge::Add => "+",
            Merge::Mul => "×",
            Merge::Concat => "‖",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Merge::Add => "add",
            Merge::Mul => "multiply",
            Merge::Concat => "concat",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Merge::Add => "#0d9488",
            Merge::Mul => "#ea580c",
            Merge::Concat => "#475569",
        }
    }

    fn class(self) -> &'static str {
        match self {
            Merge::Add => "add",
            Merge::Mul => "mul",
            Merge::Concat => "concat",
        }
    }
}

/// A parameter count for people: `576`, `34.5K`, `1.2M`, `3.0B`.
fn human(n: u64) -> String {
    if n < 1000 {
        return n.to_string();
    }
    let mut v = n as f64 / 1000.0;
    for unit in ["K", "M", "B"] {
        // Round first so that 999_960 prints as 1.0M, not 1000.0K.
        if (v * 10.0).round() / 10.0 < 1000.0 {
            return format!("{v:.1}{unit}");
        }
        v /= 1000.0;
    }
    format!("{v:.1}T")
}

/// `576→576 · 1.2M params` (no parameter part when there are none).
fn facts(n: &Node, each: bool) -> String {
    let mut s = format!("{}→{}", n.in_dim, n.out_dim);
    let p = n.params();
    if p > 0 {
        let _ = write!(s, " · {} params", human(p));
        if each {
            s.push_str(" each");
        }
    }
    s
}

/// `Stack ×30`, plus the detail when it says more than the count.
fn stack_title(n: &Node) -> String {
    let count = n.children.len();
    if n.detail.is_empty() || n.detail == format!("x{count}") {
        format!("Stack ×{count}")
    } else {
        format!("Stack ×{count} [{}]", n.detail)
    }
}

/// What the back edge of a loop says.
fn loop_label(n: &Node) -> String {
    if n.detail.is_empty() {
        "repeat".to_string()
    } else {
        n.detail.clone()
    }
}

/// Consecutive runs of structurally identical nodes (same names, details,
/// widths and parameters, recursively), with their lengths.
fn runs(children: &[Node]) -> Vec<(usize, &Node)> {
    let mut out: Vec<(usize, &Node)> = Vec::new();
    for c in children {
        match out.last_mut() {
            Some((k, prev)) if *prev == c => *k += 1,
            _ => out.push((1, c)),
        }
    }
    out
}

/// A leaf's one-line summary: `attn_q [q4_0] 576→576 · 331.8K params`.
fn summary(n: &Node) -> String {
    let mut s = n.name.clone();
    if !n.detail.is_empty() {
        let _ = write!(s, " [{}]", n.detail);
    }
    let _ = write!(s, " {}", facts(n, false));
    s
}

/// The lines of a block: name, detail, facts, then its parts (if any).
fn block_lines(n: &Node) -> (Vec<String>, Vec<String>) {
    let mut lines = vec![n.name.clone()];
    if !n.detail.is_empty() {
        lines.push(n.detail.clone());
    }
    lines.push(facts(n, false));
    let parts = n.children.iter().map(summary).collect();
    (lines, parts)
}

/// A frame's title and subtitle.
fn frame_title(n: &Node) -> (String, String) {
    match role(n) {
        Role::Stack => (stack_title(n), facts(n, false)),
        Role::Loop => (format!("Loop ↺ {}", loop_label(n)), facts(n, false)),
        _ if n.detail.is_empty() => (n.name.clone(), facts(n, false)),
        _ => (format!("{} [{}]", n.name, n.detail), facts(n, false)),
    }
}

// ---------------------------------------------------------------------------
// Text.

/// An entry under a node in the text tree.
enum Item<'a> {
    /// A child, with its count when it stands for a run of a stack.
    Node(&'a Node, Option<usize>),
    /// A line that is not a node: a skip, a merge, a back edge.
    Note(String),
}

fn text(root: &Node) -> String {
    let mut out = String::new();
    text_node(&mut out, root, None, "", None);
    out
}

fn text_items(n: &Node) -> Vec<Item<'_>> {
    let mut items: Vec<Item<'_>> = match role(n) {
        Role::Stack => runs(&n.children)
            .into_iter()
            .map(|(k, c)| Item::Node(c, Some(k)))
            .collect(),
        _ => n.children.iter().map(|c| Item::Node(c, None)).collect(),
    };
    let merge_note = |m: Merge| Item::Note(format!("({}) {}", m.symbol(), m.word()));
    match role(n) {
        Role::Residual => {
            items.insert(0, Item::Note("┄ skip (identity)".to_string()));
            items.push(merge_note(Merge::Add));
        }
        Role::Sum => items.push(merge_note(Merge::Add)),
        Role::Gate => items.push(merge_note(Merge::Mul)),
        Role::Parallel => items.push(merge_note(Merge::Concat)),
        Role::Loop => items.push(Item::Note(format!(
            "↺ back to the input: {}",
            loop_label(n)
        ))),
        _ => {}
    }
    items
}

/// Writes `n` and what is under it. `count` is set for a run of a stack
/// (`×5`), `branch` is `None` for the root, else whether `n` is its parent's
/// last entry.
fn text_node(out: &mut String, n: &Node, count: Option<usize>, prefix: &str, branch: Option<bool>) {
    let connector = match branch {
        None => "",
        Some(true) => "└─ ",
        Some(false) => "├─ ",
    };
    let mut line = String::new();
    if let Some(k) = count {
        let _ = write!(line, "×{k} ");
    }
    if role(n) == Role::Stack {
        line.push_str(&stack_title(n));
    } else {
        line.push_str(&n.name);
        if !n.detail.is_empty() {
            let _ = write!(line, " [{}]", n.detail);
        }
    }
    let each = count.is_some_and(|k| k > 1);
    let _ = writeln!(out, "{prefix}{connector}{line} {}", facts(n, each));
    let child_prefix = match branch {
        None => String::new(),
        Some(true) => format!("{prefix}   "),
        Some(false) => format!("{prefix}│  "),
    };
    let items = text_items(n);
    let last = items.len().saturating_sub(1);
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Item::Node(c, k) => text_node(out, c, k, &child_prefix, Some(i == last)),
            Item::Note(note) => {
                let connector = if i == last { "└─ " } else { "├─ " };
                let _ = writeln!(out, "{child_prefix}{connector}{note}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// A flow graph (nodes, clusters, edges in data-flow order) for DOT and Mermaid.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The model's input or output.
    Port,
    /// A leaf or a block of parts.
    Block(Kind),
    /// A fork.
    Point,
    /// Where a loop's body starts and its back edge arrives.
    LoopEntry,
    /// A merge circle.
    Merge(Merge),
}

#[derive(Debug, Clone)]
struct GNode {
    shape: Shape,
    lines: Vec<String>,
    parts: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameStyle {
    Stack,
    Run,
    Loop,
    Composite,
}

#[derive(Debug, Clone)]
struct GCluster {
    title: String,
    sub: String,
    style: FrameStyle,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum EdgeKind {
    Flow,
    Skip,
    Back(String),
}

#[derive(Debug, Clone)]
struct GEdge {
    from: usize,
    to: usize,
    kind: EdgeKind,
}

#[derive(Debug, Clone, Copy)]
enum GItem {
    Node(usize),
    Cluster(usize),
}

#[derive(Debug, Default)]
struct Flow {
    nodes: Vec<GNode>,
    clusters: Vec<GCluster>,
    edges: Vec<GEdge>,
    /// Top-level items, in creation order.
    root: Vec<GItem>,
    /// Each cluster's items, in creation order.
    members: Vec<Vec<GItem>>,
    /// The cluster each node is in.
    home: Vec<Option<usize>>,
}

impl Flow {
    fn from_tree(root: &Node) -> Flow {
        let mut f = Flow::default();
        let port = |s: &str, d: usize| vec![format!("{s} · {d}")];
        let input = f.add_node(None, Shape::Port, port("input", root.in_dim), vec![]);
        let ends = f.build(root, vec![input], None);
        let output = f.add_node(None, Shape::Port, port("output", root.out_dim), vec![]);
        f.connect(&ends, output, EdgeKind::Flow);
        f
    }

    fn items(&mut self, cluster: Option<usize>) -> &mut Vec<GItem> {
        match cluster {
            Some(c) => &mut self.members[c],
            None => &mut self.root,
        }
    }

    fn add_node(
        &mut self,
        cluster: Option<usize>,
        shape: Shape,
        lines: Vec<String>,
        parts: Vec<String>,
    ) -> usize {
        let id = self.nodes.len();
        self.nodes.push(GNode {
            shape,
            lines,
            parts,
        });
        self.home.push(cluster);
        self.items(cluster).push(GItem::Node(id));
        id
    }

    fn add_cluster(
        &mut self,
        parent: Option<usize>,
        (title, sub): (String, String),
        style: FrameStyle,
    ) -> usize {
        let id = self.clusters.len();
        self.clusters.push(GCluster { title, sub, style });
        self.members.push(Vec::new());
        self.items(parent).push(GItem::Cluster(id));
        id
    }

    fn connect(&mut self, from: &[usize], to: usize, kind: EdgeKind) {
        for &f in from {
            self.edges.push(GEdge {
                from: f,
                to,
                kind: kind.clone(),
            });
        }
    }

    fn series(&mut self, nodes: &[Node], mut ins: Vec<usize>, cl: Option<usize>) -> Vec<usize> {
        for c in nodes {
            ins = self.build(c, ins, cl);
        }
        ins
    }

    /// Adds `n` after the nodes `ins`; returns the nodes its output leaves from.
    fn build(&mut self, n: &Node, ins: Vec<usize>, cl: Option<usize>) -> Vec<usize> {
        let fork = |f: &mut Flow, m: Merge| {
            let p = f.add_node(cl, Shape::Point, vec![], vec![]);
            f.connect(&ins, p, EdgeKind::Flow);
            let mut ends = Vec::new();
            for c in &n.children {
                ends.extend(f.build(c, vec![p], cl));
            }
            let merge = f.add_node(cl, Shape::Merge(m), vec![m.symbol().into()], vec![]);
            f.connect(&ends, merge, EdgeKind::Flow);
            vec![merge]
        };
        match role(n) {
            Role::Series => self.series(&n.children, ins, cl),
            Role::Leaf | Role::Parts => {
                let (lines, parts) = block_lines(n);
                let id = self.add_node(cl, Shape::Block(Kind::of(&n.name)), lines, parts);
                self.connect(&ins, id, EdgeKind::Flow);
                vec![id]
            }
            Role::Parallel => fork(self, Merge::Concat),
            Role::Sum => fork(self, Merge::Add),
            Role::Gate => fork(self, Merge::Mul),
            Role::Residual => {
                let p = self.add_node(cl, Shape::Point, vec![], vec![]);
                self.connect(&ins, p, EdgeKind::Flow);
                let ends = self.series(&n.children, vec![p], cl);
                let merge = self.add_node(cl, Shape::Merge(Merge::Add), vec!["+".into()], vec![]);
                self.connect(&ends, merge, EdgeKind::Flow);
                self.connect(&[p], merge, EdgeKind::Skip);
                vec![merge]
            }
            Role::Stack => {
                let c = self.add_cluster(cl, frame_title(n), FrameStyle::Stack);
                let runs = runs(&n.children);
                if runs.len() == 1 {
                    return self.build(runs[0].1, ins, Some(c));
                }
                let mut cur = ins;
                for (k, child) in runs {
                    let title = (format!("×{k}"), facts(child, k > 1));
                    let rc = self.add_cluster(Some(c), title, FrameStyle::Run);
                    cur = self.build(child, cur, Some(rc));
                }
                cur
            }
            Role::Loop => {
                let c = self.add_cluster(cl, frame_title(n), FrameStyle::Loop);
                let entry = self.add_node(Some(c), Shape::LoopEntry, vec!["↺".into()], vec![]);
                self.connect(&ins, entry, EdgeKind::Flow);
                let ends = self.series(&n.children, vec![entry], Some(c));
                let label = loop_label(n);
                for &e in &ends {
                    self.connect(&[e], entry, EdgeKind::Back(label.clone()));
                }
                ends
            }
            Role::Frame => {
                let c = self.add_cluster(cl, frame_title(n), FrameStyle::Composite);
                self.series(&n.children, ins, Some(c))
            }
        }
    }

    // --- DOT -------------------------------------------------------------

    fn dot(&self) -> String {
        let mut out = String::new();
        out.push_str("digraph model {\n");
        out.push_str(
            "  graph [rankdir=TB, newrank=true, nodesep=0.3, ranksep=0.3, \
             fontname=\"monospace\", fontsize=11, bgcolor=\"white\"];\n",
        );
        out.push_str(
            "  node [fontname=\"monospace\", fontsize=10, shape=box, \
             style=\"rounded,filled\", penwidth=1.2, margin=\"0.15,0.06\"];\n",
        );
        out.push_str(
            "  edge [color=\"#475569\", arrowsize=0.7, fontname=\"monospace\", fontsize=9];\n",
        );
        self.dot_items(&mut out, &self.root, None, 1);
        for e in &self.edges {
            let attrs = match &e.kind {
                EdgeKind::Flow => String::new(),
                EdgeKind::Skip => " [style=dashed, color=\"#64748b\", label=\"skip\"]".to_string(),
                EdgeKind::Back(label) => format!(
                    " [style=dashed, color=\"#9333ea\", fontcolor=\"#9333ea\", \
                     label=\"{}\", constraint=false]",
                    dot_escape(label)
                ),
            };
            let _ = writeln!(out, "  n{} -> n{}{attrs};", e.from, e.to);
        }
        out.push_str("}\n");
        out
    }

    /// Writes the nodes and clusters of `items` (the members of `cluster`).
    fn dot_items(&self, out: &mut String, items: &[GItem], cluster: Option<usize>, depth: usize) {
        let pad = "  ".repeat(depth);
        // The branches of a fork start side by side.
        for item in items {
            let GItem::Node(p) = *item else { continue };
            if !matches!(self.nodes[p].shape, Shape::Point | Shape::LoopEntry) {
                continue;
            }
            let heads: Vec<String> = self
                .edges
                .iter()
                .filter(|e| e.from == p && e.kind == EdgeKind::Flow && self.home[e.to] == cluster)
                .map(|e| format!("n{};", e.to))
                .collect();
            if heads.len() > 1 {
                let _ = writeln!(out, "{pad}{{rank=same; {}}}", heads.join(" "));
            }
        }
        for item in items {
            match *item {
                GItem::Node(id) => {
                    let _ = writeln!(out, "{pad}n{id} [{}];", self.dot_node(id));
                }
                GItem::Cluster(c) => {
                    let cl = &self.clusters[c];
                    let (fill, stroke, dash) = frame_colours(cl.style);
                    let style = if dash.is_empty() {
                        "rounded,filled"
                    } else {
                        "rounded,dashed,filled"
                    };
                    let _ = writeln!(out, "{pad}subgraph cluster_{c} {{");
                    let _ = writeln!(
                        out,
                        "{pad}  label=\"{}\\l{}\\l\"; labeljust=l; style=\"{style}\"; \
                         fillcolor=\"{fill}\"; color=\"{stroke}\";",
                        dot_escape(&cl.title),
                        dot_escape(&cl.sub)
                    );
                    self.dot_items(out, &self.members[c], Some(c), depth + 1);
                    let _ = writeln!(out, "{pad}}}");
                }
            }
        }
    }

    fn dot_node(&self, id: usize) -> String {
        let n = &self.nodes[id];
        match n.shape {
            Shape::Port => format!(
                "label=\"{}\", shape=oval, style=filled, fillcolor=\"white\", color=\"#475569\"",
                dot_escape(&n.lines.join("\n"))
            ),
            Shape::Point => "shape=point, width=0.08, color=\"#475569\"".to_string(),
            Shape::LoopEntry => "shape=point, width=0.1, color=\"#9333ea\"".to_string(),
            Shape::Merge(m) => format!(
                "label=\"{}\", tooltip=\"{}\", shape=circle, fixedsize=true, width=0.32, \
                 style=filled, fillcolor=\"{c}\", color=\"{c}\", fontcolor=\"white\", fontsize=14",
                m.symbol(),
                m.word(),
                c = m.colour()
            ),
            Shape::Block(kind) => {
                let (fill, stroke) = kind.colours();
                let mut label = n.lines.join("\n");
                if !n.parts.is_empty() {
                    label.push_str("\n\n");
                    label.push_str(&n.parts.join("\n"));
                }
                format!(
                    "label=\"{}\", fillcolor=\"{fill}\", color=\"{stroke}\"",
                    dot_escape(&label)
                )
            }
        }
    }

    // --- Mermaid -----------------------------------------------------------

    /// Mermaid has no point shape: forks are contracted, their incoming
    /// nodes linked straight to their successors. A loop's entry is a small
    /// `↺` circle that its back edge returns to.
    fn mermaid(&self) -> String {
        let is_point = |id: usize| self.nodes[id].shape == Shape::Point;
        let mut out = String::from("flowchart TD\n");
        self.mermaid_items(&mut out, &self.root, 1);
        for e in &self.edges {
            if is_point(e.to) && e.kind != EdgeKind::Skip && !matches!(e.kind, EdgeKind::Back(_)) {
                continue; // Drawn by the point's outgoing edges.
            }
            let froms = if is_point(e.from) {
                self.point_sources(e.from)
            } else {
                vec![e.from]
            };
            let tos = if is_point(e.to) {
                self.point_targets(e.to)
            } else {
                vec![e.to]
            };
            for &f in &froms {
                for &t in &tos {
                    let arrow = match &e.kind {
                        EdgeKind::Flow => "-->".to_string(),
                        EdgeKind::Skip => "-.->|\"skip\"|".to_string(),
                        EdgeKind::Back(l) => format!("-.->|\"{}\"|", mermaid_escape(l)),
                    };
                    let _ = writeln!(out, "  n{f} {arrow} n{t}");
                }
            }
        }
        // Colours.
        for kind in [
            Kind::Norm,
            Kind::Linear,
            Kind::Attention,
            Kind::Activation,
            Kind::EmbedHead,
            Kind::Other,
        ] {
            let (fill, stroke) = kind.colours();
            let _ = writeln!(
                out,
                "  classDef {} fill:{fill},stroke:{stroke},color:#0f172a",
                kind.class()
            );
        }
        for m in [Merge::Add, Merge::Mul, Merge::Concat] {
            let _ = writeln!(
                out,
                "  classDef {} fill:{c},stroke:{c},color:#ffffff",
                m.class(),
                c = m.colour()
            );
        }
        out.push_str("  classDef port fill:#ffffff,stroke:#475569,color:#0f172a\n");
        out.push_str("  classDef loop fill:#faf5ff,stroke:#9333ea,color:#7e22ce\n");
        for (c, cl) in self.clusters.iter().enumerate() {
            let (fill, stroke, dash) = frame_colours(cl.style);
            let dash = if dash.is_empty() {
                String::new()
            } else {
                format!(",stroke-dasharray:{dash}")
            };
            let _ = writeln!(out, "  style c{c} fill:{fill},stroke:{stroke}{dash}");
        }
        let mut classes: Vec<(&str, Vec<String>)> = Vec::new();
        for (id, n) in self.nodes.iter().enumerate() {
            let class = match n.shape {
                Shape::Port => "port",
                Shape::Block(k) => k.class(),
                Shape::Merge(m) => m.class(),
                Shape::LoopEntry => "loop",
                Shape::Point => continue,
            };
            match classes.iter_mut().find(|(c, _)| *c == class) {
                Some((_, ids)) => ids.push(format!("n{id}")),
                None => classes.push((class, vec![format!("n{id}")])),
            }
        }
        for (class, ids) in classes {
            let _ = writeln!(out, "  class {} {class}", ids.join(","));
        }
        out
    }

    /// The non-point nodes feeding `p` through points.
    fn point_sources(&self, p: usize) -> Vec<usize> {
        let mut out = Vec::new();
        for e in self
            .edges
            .iter()
            .filter(|e| e.to == p && e.kind == EdgeKind::Flow)
        {
            if self.nodes[e.from].shape == Shape::Point {
                out.extend(self.point_sources(e.from));
            } else {
                out.push(e.from);
            }
        }
        out
    }

    /// The non-point nodes `p` feeds through points (along flow edges).
    fn point_targets(&self, p: usize) -> Vec<usize> {
        let mut out = Vec::new();
        for e in self
            .edges
            .iter()
            .filter(|e| e.from == p && e.kind == EdgeKind::Flow)
        {
            if self.nodes[e.to].shape == Shape::Point {
                out.extend(self.point_targets(e.to));
            } else {
                out.push(e.to);
            }
        }
        out
    }

    fn mermaid_items(&self, out: &mut String, items: &[GItem], depth: usize) {
        let pad = "  ".repeat(depth);
        for item in items {
            match *item {
                GItem::Node(id) => {
                    let n = &self.nodes[id];
                    let mut lines: Vec<String> =
                        n.lines.iter().map(|l| mermaid_escape(l)).collect();
                    lines.extend(n.parts.iter().map(|l| mermaid_escape(l)));
                    let label = lines.join("<br/>");
                    let _ = match n.shape {
                        Shape::Point => Ok(()),
                        Shape::Port => writeln!(out, "{pad}n{id}([\"{label}\"])"),
                        Shape::Block(_) => writeln!(out, "{pad}n{id}[\"{label}\"]"),
                        Shape::Merge(_) | Shape::LoopEntry => {
                            writeln!(out, "{pad}n{id}((\"{label}\"))")
                        }
                    };
                }
                GItem::Cluster(c) => {
                    let cl = &self.clusters[c];
                    let _ = writeln!(
                        out,
                        "{pad}subgraph c{c}[\"{} · {}\"]",
                        mermaid_escape(&cl.title),
                        mermaid_escape(&cl.sub)
                    );
                    let _ = writeln!(out, "{pad}  direction TB");
                    self.mermaid_items(out, &self.members[c], depth + 1);
                    let _ = writeln!(out, "{pad}end");
                }
            }
        }
    }
}

/// A frame's fill, stroke and dash pattern (empty: solid).
fn frame_colours(style: FrameStyle) -> (&'static str, &'static str, &'static str) {
    match style {
        FrameStyle::Stack => ("#f8fafc", "#94a3b8", ""),
        FrameStyle::Run => ("#ffffff", "#94a3b8", "5 3"),
        FrameStyle::Loop => ("#faf5ff", "#a855f7", ""),
        FrameStyle::Composite => ("#ffffff", "#94a3b8", "2 3"),
    }
}

fn dot_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            _ => out.push(ch),
        }
    }
    out
}

fn mermaid_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '#' => out.push_str("#35;"),
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '|' => out.push_str("#124;"),
            _ => out.push(ch),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// SVG: an in-process layout.
//
// Every laid-out piece has a width, a height and an axis: the x where data
// enters at its top and leaves at its bottom. A series aligns its children's
// axes; forks place branches side by side and join them at a merge circle on
// the axis.

const FONT: &str = "DejaVu Sans Mono, Menlo, Consolas, Liberation Mono, monospace";
/// Advance of a monospace glyph, in em.
const CHAR_EM: f64 = 0.61;
const TITLE_PX: f64 = 12.5;
const SMALL_PX: f64 = 10.5;
const PART_PX: f64 = 10.0;
/// Vertical gap (an arrow) between consecutive pieces of a series.
const GAP: f64 = 24.0;
/// Horizontal gap between branches.
const BRANCH_GAP: f64 = 28.0;
/// Radius of a merge circle.
const R: f64 = 11.0;
/// y of the fork dot, and of the branches' tops, below a fork's top.
const FORK_Y: f64 = 5.0;
const BRANCH_TOP: f64 = 28.0;
/// From the bottom of the branches to the top of the merge circle.
const MERGE_DROP: f64 = 22.0;
/// Room under a merge circle for its word.
const MERGE_FOOT: f64 = 13.0;
/// Frames: padding and header height.
const PAD: f64 = 12.0;
const HEADER: f64 = 26.0;
const LOOP_LANE: f64 = 26.0;
const LOOP_FOOT: f64 = 24.0;
const INK: &str = "#475569";

fn text_w(s: &str, px: f64) -> f64 {
    s.chars().count() as f64 * px * CHAR_EM
}

/// Formats a coordinate with at most one decimal.
fn num(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    if r.fract() == 0.0 {
        format!("{}", r as i64)
    } else {
        format!("{r:.1}")
    }
}

/// Escapes text for XML content and attributes.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 has no way to write other control characters.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{fffd}'),
            _ => out.push(ch),
        }
    }
    out
}

struct Lay {
    w: f64,
    h: f64,
    axis: f64,
    /// Whether the arrow arriving at the top ends in an arrowhead (not for a
    /// fork dot or a frame, whose inner line carries it).
    arrow_in: bool,
    k: LayKind,
}

enum LayKind {
    /// Nothing: the line passes through.
    Pass,
    Pill(String),
    Block {
        kind: Kind,
        lines: Vec<String>,
        parts: Vec<String>,
    },
    Series(Vec<Lay>),
    Branches {
        /// Each branch with its x offset.
        branches: Vec<(f64, Lay)>,
        merge: Merge,
        cy: f64,
    },
    Residual {
        body: Box<Lay>,
        bx: f64,
        lane: f64,
        cy: f64,
    },
    Frame {
        style: FrameStyle,
        title: String,
        sub: String,
        title_x: f64,
        body: Box<Lay>,
        bx: f64,
        by: f64,
        /// A loop's back-edge label, its lane x and the label's x.
        back: Option<(String, f64, f64)>,
    },
}

impl Lay {
    fn pass() -> Lay {
        Lay {
            w: 0.0,
            h: 0.0,
            axis: 0.0,
            arrow_in: false,
            k: LayKind::Pass,
        }
    }

    fn pill(text: String) -> Lay {
        let w = text_w(&text, SMALL_PX) + 28.0;
        Lay {
            w,
            h: 24.0,
            axis: w / 2.0,
            arrow_in: true,
            k: LayKind::Pill(text),
        }
    }

    fn block(n: &Node) -> Lay {
        let (lines, parts) = block_lines(n);
        let mut w = text_w(&lines[0], TITLE_PX);
        for l in &lines[1..] {
            w = w.max(text_w(l, SMALL_PX));
        }
        for p in &parts {
            w = w.max(text_w(p, PART_PX));
        }
        let w = (w + 22.0).max(96.0).round();
        let mut h = 8.0 + 15.0 + 13.5 * (lines.len() - 1) as f64 + 7.0;
        if !parts.is_empty() {
            h += 8.0 + 13.0 * parts.len() as f64;
        }
        Lay {
            w,
            h,
            axis: (w / 2.0).round(),
            arrow_in: true,
            k: LayKind::Block {
                kind: Kind::of(&n.name),
                lines,
                parts,
            },
        }
    }

    fn series(mut items: Vec<Lay>) -> Lay {
        items.retain(|l| !matches!(l.k, LayKind::Pass));
        if items.is_empty() {
            return Lay::pass();
        }
        if items.len() == 1 {
            return items.pop().unwrap_or_else(Lay::pass);
        }
        let left = items.iter().map(|l| l.axis).fold(0.0, f64::max);
        let right = items.iter().map(|l| l.w - l.axis).fold(0.0, f64::max);
        let h = items.iter().map(|l| l.h).sum::<f64>() + GAP * (items.len() - 1) as f64;
        Lay {
            w: left + right,
            h,
            axis: left,
            arrow_in: items[0].arrow_in,
            k: LayKind::Series(items),
        }
    }

    fn branches(items: Vec<Lay>, merge: Merge) -> Lay {
        let items: Vec<Lay> = if items.is_empty() {
            vec![Lay::pass()]
        } else {
            items
        };
        let mut x = 0.0;
        let mut placed = Vec::with_capacity(items.len());
        for l in items {
            let w = l.w;
            placed.push((x, l));
            x += w + BRANCH_GAP;
        }
        let mut w = x - BRANCH_GAP;
        let first = placed[0].0 + placed[0].1.axis;
        let last = placed[placed.len() - 1].0 + placed[placed.len() - 1].1.axis;
        let mut axis = ((first + last) / 2.0).round();
        // Room for the merge word left of the exit line.
        let need = text_w(merge.word(), 9.5) + 8.0;
        if axis < need {
            let dx = need - axis;
            for (bx, _) in &mut placed {
                *bx += dx;
            }
            axis += dx;
            w += dx;
        }
        let bh = placed.iter().map(|(_, l)| l.h).fold(0.0, f64::max);
        let cy = BRANCH_TOP + bh + MERGE_DROP + R;
        Lay {
            w: w.max(axis + R + 2.0),
            h: cy + R + MERGE_FOOT,
            axis,
            arrow_in: false,
            k: LayKind::Branches {
                branches: placed,
                merge,
                cy,
            },
        }
    }

    fn residual(body: Lay) -> Lay {
        let need = text_w(Merge::Add.word(), 9.5) + 8.0;
        let bx = (need - body.axis).max(0.0);
        let axis = bx + body.axis;
        let lane = (bx + body.w + 14.0).max(axis + R + 14.0);
        let cy = BRANCH_TOP + body.h + MERGE_DROP + R;
        Lay {
            w: lane + 6.0,
            h: cy + R + MERGE_FOOT,
            axis,
            arrow_in: false,
            k: LayKind::Residual {
                body: Box::new(body),
                bx,
                lane,
                cy,
            },
        }
    }

    fn frame(
        style: FrameStyle,
        (title, sub): (String, String),
        body: Lay,
        back: Option<String>,
    ) -> Lay {
        let lane_room = if back.is_some() { LOOP_LANE } else { 0.0 };
        let bx = PAD + lane_room;
        let by = HEADER + 10.0;
        let axis = bx + body.axis;
        let mut w = bx + body.w + PAD;
        let h = by + body.h + PAD + if back.is_some() { LOOP_FOOT } else { 0.0 };
        // The header text: left of the entry line if it fits, else right of it.
        let tw = text_w(&title, 11.5) + 8.0 + text_w(&sub, SMALL_PX);
        let title_x = if PAD + tw + 8.0 <= axis {
            PAD
        } else {
            axis + 10.0
        };
        w = w.max(title_x + tw + PAD);
        let back = back.map(|label| {
            let lane = PAD + 8.0;
            let lw = text_w(&label, SMALL_PX);
            let lx = if lane + 6.0 + lw + 8.0 <= axis {
                lane + 6.0
            } else {
                axis + 10.0
            };
            w = w.max(lx + lw + PAD);
            (label, lane, lx)
        });
        Lay {
            w,
            h,
            axis,
            arrow_in: false,
            k: LayKind::Frame {
                style,
                title,
                sub,
                title_x,
                body: Box::new(body),
                bx,
                by,
                back,
            },
        }
    }

    fn of(n: &Node) -> Lay {
        let series = |nodes: &[Node]| Lay::series(nodes.iter().map(Lay::of).collect());
        match role(n) {
            Role::Series => series(&n.children),
            Role::Leaf | Role::Parts => Lay::block(n),
            Role::Parallel => {
                Lay::branches(n.children.iter().map(Lay::of).collect(), Merge::Concat)
            }
            Role::Sum => Lay::branches(n.children.iter().map(Lay::of).collect(), Merge::Add),
            Role::Gate => Lay::branches(n.children.iter().map(Lay::of).collect(), Merge::Mul),
            Role::Residual => Lay::residual(series(&n.children)),
            Role::Stack => {
                let runs = runs(&n.children);
                let body = if runs.len() <= 1 {
                    runs.first().map_or_else(Lay::pass, |(_, c)| Lay::of(c))
                } else {
                    Lay::series(
                        runs.iter()
                            .map(|&(k, c)| {
                                let title = (format!("×{k}"), facts(c, k > 1));
                                Lay::frame(FrameStyle::Run, title, Lay::of(c), None)
                            })
                            .collect(),
                    )
                };
                Lay::frame(FrameStyle::Stack, frame_title(n), body, None)
            }
            Role::Loop => Lay::frame(
                FrameStyle::Loop,
                frame_title(n),
                series(&n.children),
                Some(loop_label(n)),
            ),
            Role::Frame => Lay::frame(
                FrameStyle::Composite,
                frame_title(n),
                series(&n.children),
                None,
            ),
        }
    }

    /// Draws the piece with its top-left corner at `(x, y)`.
    fn draw(&self, s: &mut String, x: f64, y: f64) {
        let ax = x + self.axis;
        match &self.k {
            LayKind::Pass => {}
            LayKind::Pill(t) => {
                let _ = writeln!(
                    s,
                    r##"<rect x="{}" y="{}" width="{}" height="{}" rx="12" fill="#ffffff" stroke="{INK}" stroke-width="1.3"/>"##,
                    num(x),
                    num(y),
                    num(self.w),
                    num(self.h)
                );
                text_at(s, ax, y + 16.0, SMALL_PX, "middle", "#0f172a", false, t);
            }
            LayKind::Block { kind, lines, parts } => {
                let (fill, stroke) = kind.colours();
                let _ = writeln!(s, "<g><title>{}</title>", xml(&tooltip(lines, parts)));
                let _ = writeln!(
                    s,
                    r##"<rect x="{}" y="{}" width="{}" height="{}" rx="6" fill="{fill}" stroke="{stroke}" stroke-width="1.3"/>"##,
                    num(x),
                    num(y),
                    num(self.w),
                    num(self.h)
                );
                let cx = x + self.w / 2.0;
                let mut ty = y + 8.0 + 12.0;
                text_at(s, cx, ty, TITLE_PX, "middle", "#0f172a", true, &lines[0]);
                for (i, l) in lines[1..].iter().enumerate() {
                    ty += 13.5;
                    let colour = if i + 2 == lines.len() {
                        "#334155"
                    } else {
                        "#64748b"
                    };
                    text_at(s, cx, ty, SMALL_PX, "middle", colour, false, l);
                }
                if !parts.is_empty() {
                    let ly = ty + 8.0;
                    let _ = writeln!(
                        s,
                        r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{stroke}" stroke-width="0.8" stroke-dasharray="3 2"/>"##,
                        num(x + 6.0),
                        num(ly),
                        num(x + self.w - 6.0),
                        num(ly)
                    );
                    let mut py = ly;
                    for p in parts {
                        py += 13.0;
                        text_at(s, x + 11.0, py, PART_PX, "start", "#334155", false, p);
                    }
                }
                s.push_str("</g>\n");
            }
            LayKind::Series(items) => {
                let mut cy = y;
                for (i, l) in items.iter().enumerate() {
                    if i > 0 {
                        line(s, ax, cy - GAP, ax, cy, l.arrow_in);
                    }
                    l.draw(s, ax - l.axis, cy);
                    cy += l.h + GAP;
                }
            }
            LayKind::Branches {
                branches,
                merge,
                cy,
            } => {
                let fy = y + FORK_Y;
                let top = y + BRANCH_TOP;
                let my = y + cy;
                line(s, ax, y, ax, fy, false);
                for (bx, b) in branches {
                    let bax = x + bx + b.axis;
                    path(
                        s,
                        &format!("M{} {} H{} V{}", num(ax), num(fy), num(bax), num(top)),
                        b.arrow_in,
                        None,
                    );
                    b.draw(s, x + bx, top);
                    let bottom = top + b.h;
                    if (bax - ax).abs() < 1.0 {
                        line(s, bax, bottom, ax, my - R, true);
                    } else {
                        let side = if bax < ax { ax - R } else { ax + R };
                        path(
                            s,
                            &format!("M{} {} V{} H{}", num(bax), num(bottom), num(my), num(side)),
                            true,
                            None,
                        );
                    }
                }
                fork_dot(s, ax, fy);
                merge_circle(s, ax, my, *merge);
                line(s, ax, my + R, ax, y + self.h, false);
            }
            LayKind::Residual { body, bx, lane, cy } => {
                let fy = y + FORK_Y;
                let top = y + BRANCH_TOP;
                let my = y + cy;
                let lane = x + lane;
                line(s, ax, y, ax, fy, false);
                let _ = writeln!(s, "<g><title>skip: the input is added back</title>");
                path(
                    s,
                    &format!(
                        "M{} {} H{} V{} H{}",
                        num(ax),
                        num(fy),
                        num(lane),
                        num(my),
                        num(ax + R)
                    ),
                    true,
                    Some("4 3"),
                );
                s.push_str("</g>\n");
                line(s, ax, fy, ax, top, body.arrow_in);
                body.draw(s, x + bx, top);
                line(s, ax, top + body.h, ax, my - R, true);
                fork_dot(s, ax, fy);
                merge_circle(s, ax, my, Merge::Add);
                line(s, ax, my + R, ax, y + self.h, false);
            }
            LayKind::Frame {
                style,
                title,
                sub,
                title_x,
                body,
                bx,
                by,
                back,
            } => {
                let (fill, stroke, dash) = frame_colours(*style);
                let dash = if dash.is_empty() {
                    String::new()
                } else {
                    format!(r#" stroke-dasharray="{dash}""#)
                };
                let _ = writeln!(
                    s,
                    r##"<rect x="{}" y="{}" width="{}" height="{}" rx="10" fill="{fill}" stroke="{stroke}" stroke-width="1.3"{dash}/>"##,
                    num(x),
                    num(y),
                    num(self.w),
                    num(self.h)
                );
                let tx = x + title_x;
                let _ = writeln!(
                    s,
                    r##"<text x="{}" y="{}" font-size="11.5" fill="#1e293b"><tspan font-weight="bold">{}</tspan><tspan dx="{}" font-size="{SMALL_PX}" fill="#64748b">{}</tspan></text>"##,
                    num(tx),
                    num(y + 18.0),
                    xml(title),
                    num(8.0),
                    xml(sub)
                );
                let top = y + by;
                line(s, ax, y, ax, top, body.arrow_in);
                body.draw(s, x + bx, top);
                let bottom = top + body.h;
                line(s, ax, bottom, ax, y + self.h, false);
                if let Some((label, lane, lx)) = back {
                    let lane = x + lane;
                    let low = bottom + 8.0;
                    let high = top - 8.0;
                    let _ = writeln!(
                        s,
                        r##"<path d="M{} {} H{} V{} H{}" fill="none" stroke="#9333ea" stroke-width="1.3" stroke-dasharray="5 3" marker-end="url(#arrow-loop)"/>"##,
                        num(ax),
                        num(low),
                        num(lane),
                        num(high),
                        num(ax - 1.5)
                    );
                    text_at(
                        s,
                        x + lx,
                        low + 14.0,
                        SMALL_PX,
                        "start",
                        "#7e22ce",
                        false,
                        &format!("↺ {label}"),
                    );
                }
            }
        }
    }
}

fn tooltip(lines: &[String], parts: &[String]) -> String {
    let mut t = lines.join(" · ");
    for p in parts {
        t.push('\n');
        t.push_str(p);
    }
    t
}

#[allow(clippy::too_many_arguments)]
fn text_at(s: &mut String, x: f64, y: f64, px: f64, anchor: &str, fill: &str, bold: bool, t: &str) {
    let weight = if bold { r##" font-weight="bold""## } else { "" };
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" font-size="{px}" text-anchor="{anchor}" fill="{fill}"{weight}>{}</text>"##,
        num(x),
        num(y),
        xml(t)
    );
}

fn line(s: &mut String, x1: f64, y1: f64, x2: f64, y2: f64, arrow: bool) {
    if (y2 - y1).abs() < 0.5 && (x2 - x1).abs() < 0.5 {
        return;
    }
    path(
        s,
        &format!("M{} {} L{} {}", num(x1), num(y1), num(x2), num(y2)),
        arrow,
        None,
    );
}

fn path(s: &mut String, d: &str, arrow: bool, dash: Option<&str>) {
    let marker = if arrow {
        r##" marker-end="url(#arrow)""##
    } else {
        ""
    };
    let dash = dash.map_or(String::new(), |d| format!(r##" stroke-dasharray="{d}""##));
    let _ = writeln!(
        s,
        r##"<path d="{d}" fill="none" stroke="{INK}" stroke-width="1.3"{dash}{marker}/>"##
    );
}

fn fork_dot(s: &mut String, x: f64, y: f64) {
    let _ = writeln!(
        s,
        r##"<circle cx="{}" cy="{}" r="3.5" fill="{INK}"/>"##,
        num(x),
        num(y)
    );
}

fn merge_circle(s: &mut String, x: f64, y: f64, m: Merge) {
    let c = m.colour();
    let _ = writeln!(
        s,
        r##"<g><title>{word}</title><circle cx="{cx}" cy="{cy}" r="{R}" fill="{c}" stroke="{c}"/><text x="{cx}" y="{ty}" font-size="15" font-weight="bold" text-anchor="middle" fill="#ffffff">{sym}</text></g>"##,
        word = m.word(),
        cx = num(x),
        cy = num(y),
        ty = num(y + 5.0),
        sym = xml(m.symbol()),
    );
    text_at(s, x - 6.0, y + R + 10.0, 9.5, "end", c, false, m.word());
}

fn svg(root: &Node) -> String {
    const MARGIN: f64 = 24.0;
    const CAPTION: f64 = 26.0;
    let lay = Lay::series(vec![
        Lay::pill(format!("input · {}", root.in_dim)),
        Lay::of(root),
        Lay::pill(format!("output · {}", root.out_dim)),
    ]);
    let caption = format!(
        "{} · {}→{} · {} params",
        root.name,
        root.in_dim,
        root.out_dim,
        human(root.params())
    );
    let w = (lay.w + 2.0 * MARGIN)
        .max(text_w(&caption, 12.0) + 2.0 * MARGIN)
        .ceil();
    let h = (lay.h + 2.0 * MARGIN + CAPTION).ceil();
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{FONT}">"##
    );
    let _ = writeln!(s, "<title>{}</title>", xml(&caption));
    s.push_str(concat!(
        "<defs>\n",
        r##"<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0 0 L10 5 L0 10 z" fill="#475569"/></marker>"##,
        "\n",
        r##"<marker id="arrow-loop" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0 0 L10 5 L0 10 z" fill="#9333ea"/></marker>"##,
        "\n</defs>\n"
    ));
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    text_at(
        &mut s,
        MARGIN,
        MARGIN + 4.0,
        12.0,
        "start",
        "#0f172a",
        true,
        &caption,
    );
    // Centre the drawing horizontally.
    let x = ((w - lay.w) / 2.0).round();
    lay.draw(&mut s, x, MARGIN + CAPTION);
    s.push_str("</svg>\n");
    s
}
