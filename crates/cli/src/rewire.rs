//! `patchbay rewire`: re-wired variants of a model (dropped, repeated,
//! swapped, parallel layers) measured against the model as trained.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use patchbay_combinators::{Layer, PLAN_HELP};
use patchbay_models::catalog;
use patchbay_models::families::{self, BuildOptions, CausalLmVariantsVisitor, Model};
use patchbay_models::runners::perplexity::Perplexity;
use patchbay_models::runners::rewire::{
    self, Progress, RewireConfig, RewireReport, Sweep, Variant, VariantStats,
};
use patchbay_models::tokenizer::Tokenizer;

use crate::common;
use crate::plot;

const AFTER_HELP: &str = "\
For each variant, against the unmodified model on the same tokens (the chunks `perplexity`
scores): perplexity and its change, mean and max KL(original || variant), top-1 agreement,
tokens/s; for `drop` and `drop-span` also ShortGPT's Block Influence and the angular
distance of Gromov et al. (from the original's hidden states) and their Spearman rank
correlation with the measured change of perplexity.

Sweep kinds: drop (each layer alone), drop-span:K (every window of K consecutive layers),
swap-adjacent, repeat (each layer twice), parallel-pairs (each adjacent pair in parallel,
merged by the sum of residual updates and by the mean of the outputs), reverse-middle:A-B
(layers A to B in reverse order), prefix (the first n layers only, for every n).

With -o DIR: results.csv (one row per variant, identical across runs, thread counts and
--batch sizes), timings.csv, manifest.json and plots (SVG and PNG).
";

/// Arguments of `patchbay rewire`.
#[derive(clap::Args, Debug)]
#[command(after_help = format!("{AFTER_HELP}\n{PLAN_HELP}"))]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["layers", "sweep", "replot"])))]
pub struct RewireArgs {
    /// Model short name or path.
    #[arg(short, long, default_value = catalog::DEFAULT_MODEL)]
    pub model: String,
    /// The text file to score.
    #[arg(short, long, required_unless_present = "replot")]
    pub file: Option<PathBuf>,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512, value_parser = crate::common::count, allow_negative_numbers = true)]
    pub ctx: usize,
    /// Score at most N chunks (0 = all).
    #[arg(long, value_parser = crate::common::count, allow_negative_numbers = true)]
    pub chunks: Option<usize>,
    /// A variant to measure, as a layer plan (see below); give it several times.
    #[arg(long, value_name = "PLAN")]
    pub layers: Vec<String>,
    /// A family of variants (drop, drop-span:K, swap-adjacent, repeat,
    /// parallel-pairs, reverse-middle:A-B, prefix); give it several times.
    #[arg(long, value_name = "KIND")]
    pub sweep: Vec<Sweep>,
    /// Worker threads (0 = one per core).
    #[arg(short = 't', long, default_value_t = 0, value_parser = crate::common::count, allow_negative_numbers = true)]
    pub threads: usize,
    /// Prompt rows per forward call.
    #[arg(long, default_value_t = 512, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub batch: usize,
    /// Write results.csv, timings.csv, manifest.json and plots here.
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Redraw the plots in DIR from the results.csv a run wrote there; runs no model.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["layers", "sweep", "output", "file"])]
    pub replot: Option<PathBuf>,
}

/// A variant with where it came from.
#[derive(Debug, Clone)]
struct Entry {
    /// `layers` or the sweep kind.
    source: String,
    sweep: Option<Sweep>,
    variant: Variant,
}

/// Runs `patchbay rewire`.
pub fn run(args: &RewireArgs) -> Result<()> {
    if let Some(dir) = &args.replot {
        return replot(dir);
    }
    let Some(file) = &args.file else {
        anyhow::bail!("--file is required");
    };
    let text = common::read_text_file(file)?;
    let path = catalog::resolve_model(&args.model).map_err(anyhow::Error::msg)?;
    common::warn_if_capped(args.threads);
    let source = families::open(&path).with_context(|| format!("loading {}", path.display()))?;
    let n = source.hparams().n_layer;
    let mut entries = Vec::new();
    for text in &args.layers {
        let plan = common::plan_of(text, n)?;
        entries.push(Entry {
            source: "layers".into(),
            sweep: None,
            variant: Variant {
                name: if text.starts_with('@') {
                    text.clone()
                } else {
                    plan.to_string()
                },
                plan,
                layer: None,
                removes: None,
            },
        });
    }
    for &sweep in &args.sweep {
        let variants = sweep
            .variants(n)
            .map_err(|e| common::UsageError(e.to_string()))?;
        for variant in variants {
            entries.push(Entry {
                source: sweep.to_string(),
                sweep: Some(sweep),
                variant,
            });
        }
    }
    let tokenizer =
        Tokenizer::load(&path).with_context(|| format!("loading {}", path.display()))?;
    let tokens = tokenizer.encode(&text, true);
    let bos = tokenizer.add_bos().then(|| tokenizer.bos()).flatten();
    let mut spans: Vec<usize> = entries
        .iter()
        .filter_map(|e| e.variant.removes.map(|r| r.1))
        .collect();
    spans.push(1);
    let cfg = RewireConfig {
        ctx: args.ctx,
        chunks: args.chunks,
        threads: args.threads,
        batch: args.batch,
    };
    let mut plans = vec![None];
    plans.extend(entries.iter().map(|e| Some(e.variant.plan.clone())));
    let build = BuildOptions {
        max_context: args.ctx.max(1),
        ..BuildOptions::default()
    };
    let job = Compare {
        tokens: &tokens,
        bos,
        cfg: &cfg,
        spans: &spans,
        names: entries.iter().map(|e| e.variant.name.clone()).collect(),
    };
    let report = families::with_causal_lm_variants(&source, &build, &plans, job)
        .with_context(|| format!("loading {}", path.display()))??;
    let table = markdown(&entries, &report, args);
    common::write_stdout(table.as_bytes())?;
    if let Some(dir) = &args.output {
        write_outputs(dir, &path, file, &entries, &report, args)?;
    }
    Ok(())
}

struct Compare<'a> {
    tokens: &'a [u32],
    bos: Option<u32>,
    cfg: &'a RewireConfig,
    spans: &'a [usize],
    names: Vec<String>,
}

impl CausalLmVariantsVisitor for Compare<'_> {
    type Output = Result<RewireReport>;
    fn visit<N: Layer>(self, models: Vec<Model<N>>) -> Result<RewireReport> {
        let tty = std::io::stderr().is_terminal();
        let names = self.names;
        let report = rewire::compare(
            &models,
            self.tokens,
            self.bos,
            self.cfg,
            self.spans,
            |p: Progress| {
                if !tty {
                    return;
                }
                let what = match p.variant {
                    None => "baseline",
                    Some(v) => names.get(v).map_or("?", String::as_str),
                };
                eprintln!("[chunk {}/{}] {what}", p.chunk + 1, p.chunks);
            },
        )?;
        Ok(report)
    }
}

/// A float for a file: the shortest text that reads back as the same
/// `f64`, `nan` for none.
fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v}"),
        Some(v) => format!("{v}").to_lowercase(),
        None => String::new(),
    }
}

/// The layer scores of an entry, when they apply.
fn scores(e: &Entry, r: &RewireReport) -> (Option<f64>, Option<f64>) {
    match e.variant.removes {
        Some((first, k)) => (
            r.scores.block_influence(first, k),
            r.scores.angular_distance(first, k),
        ),
        None => (None, None),
    }
}

fn delta(s: &VariantStats, base: &Perplexity) -> f64 {
    s.ppl.ppl() - base.ppl()
}

/// Spearman correlations of the layer scores with Δppl for each scored sweep.
fn correlations(entries: &[Entry], r: &RewireReport) -> Vec<(Sweep, Option<f64>, Option<f64>)> {
    let mut sweeps: Vec<Sweep> = entries.iter().filter_map(|e| e.sweep).collect();
    sweeps.dedup();
    sweeps
        .into_iter()
        .filter(|s| s.scored())
        .map(|s| {
            let (mut d, mut bi, mut ang) = (Vec::new(), Vec::new(), Vec::new());
            for (e, st) in entries.iter().zip(&r.variants) {
                if e.sweep != Some(s) {
                    continue;
                }
                let (b, a) = scores(e, r);
                d.push(delta(st, &r.baseline.ppl));
                bi.push(b.unwrap_or(f64::NAN));
                ang.push(a.unwrap_or(f64::NAN));
            }
            (s, rewire::spearman(&bi, &d), rewire::spearman(&ang, &d))
        })
        .collect()
}

fn markdown(entries: &[Entry], r: &RewireReport, args: &RewireArgs) -> String {
    let base = &r.baseline;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Baseline: PPL {:.4} +/- {:.4} ({} chunks of {}, {} tokens scored, {:.1} t/s)\n",
        base.ppl.ppl(),
        base.ppl.std_error(),
        r.chunks,
        args.ctx,
        base.ppl.count,
        base.tokens_per_second()
    );
    s.push_str(
        "| variant | plan | PPL | ΔPPL | KL mean | KL max | top-1 agree | BI | angular | t/s |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let opt = |v: Option<f64>| v.map_or("".to_string(), |v| format!("{v:.4}"));
    for (e, st) in entries.iter().zip(&r.variants) {
        let (bi, ang) = scores(e, r);
        let _ = writeln!(
            s,
            "| {} | `{}` | {:.4} | {:+.4} | {:.5} | {:.4} | {:.4} | {} | {} | {:.1} |",
            e.variant.name.replace('|', "\\|"),
            e.variant.plan.to_string().replace('|', "\\|"),
            st.ppl.ppl(),
            delta(st, &base.ppl),
            st.kl_mean(),
            st.kl_max,
            st.agreement(),
            opt(bi),
            opt(ang),
            st.tokens_per_second()
        );
    }
    let corr = correlations(entries, r);
    if !corr.is_empty() {
        s.push_str("\nSpearman rank correlation with ΔPPL:\n\n| sweep | Block Influence | angular distance |\n|---|---:|---:|\n");
        for (sweep, bi, ang) in corr {
            let _ = writeln!(s, "| {sweep} | {} | {} |", opt(bi), opt(ang));
        }
    }
    s
}

/// `results.csv`: one row per variant (the baseline first), no timings.
fn results_csv(entries: &[Entry], r: &RewireReport) -> String {
    let mut s = String::from(
        "variant,source,plan,layer_applications,ppl,delta_ppl,ppl_std_error,kl_mean,kl_max,\
         top1_agreement,block_influence,angular_distance,tokens_scored\n",
    );
    let base = &r.baseline;
    let _ = writeln!(
        s,
        "baseline,baseline,all,{},{},0,{},0,0,1,,,{}",
        r.scores.n_layers,
        num(Some(base.ppl.ppl())),
        num(Some(base.ppl.std_error())),
        base.ppl.count
    );
    for (e, st) in entries.iter().zip(&r.variants) {
        let (bi, ang) = scores(e, r);
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            csv(&e.variant.name),
            csv(&e.source),
            csv(&e.variant.plan.to_string()),
            e.variant.plan.layer_applications(),
            num(Some(st.ppl.ppl())),
            num(Some(delta(st, &base.ppl))),
            num(Some(st.ppl.std_error())),
            num(Some(st.kl_mean())),
            num(Some(st.kl_max)),
            num(Some(st.agreement())),
            num(bi),
            num(ang),
            st.ppl.count
        );
    }
    s
}

/// Quotes a CSV field when it needs it.
fn csv(field: &str) -> String {
    if field.contains([',', '"', '\n']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

fn timings_csv(entries: &[Entry], r: &RewireReport) -> String {
    let mut s = String::from("variant,seconds,tokens,tokens_per_second\n");
    let mut row = |name: &str, st: &VariantStats| {
        let _ = writeln!(
            s,
            "{},{:.6},{},{:.3}",
            csv(name),
            st.seconds,
            st.tokens,
            st.tokens_per_second()
        );
    };
    row("baseline", &r.baseline);
    for (e, st) in entries.iter().zip(&r.variants) {
        row(&e.variant.name, st);
    }
    s
}

/// SHA-256 of a file, or of a directory's regular files (each `name` and
/// digest, in name order).
fn sha256_of(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    fn file(p: &Path) -> Result<String> {
        let mut h = Sha256::new();
        let mut f = std::fs::File::open(p).with_context(|| format!("hashing {}", p.display()))?;
        std::io::copy(&mut f, &mut h).with_context(|| format!("hashing {}", p.display()))?;
        Ok(hex(&h.finalize()))
    }
    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
    if !path.is_dir() {
        return file(path);
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    let mut h = Sha256::new();
    for p in names {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        h.update(format!("{}  {}\n", file(&p)?, name.unwrap_or_default()));
    }
    Ok(hex(&h.finalize()))
}

fn write_outputs(
    dir: &Path,
    model: &Path,
    file: &Path,
    entries: &[Entry],
    r: &RewireReport,
    args: &RewireArgs,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("-o {}", dir.display()))?;
    let put = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))
    };
    put("results.csv", results_csv(entries, r).as_bytes())?;
    put("timings.csv", timings_csv(entries, r).as_bytes())?;
    let manifest = serde_json::json!({
        "model": model.display().to_string(),
        "model_sha256": sha256_of(model)?,
        "corpus": file.display().to_string(),
        "corpus_sha256": sha256_of(file)?,
        "plans": entries.iter().map(|e| serde_json::json!({
            "variant": e.variant.name,
            "source": e.source,
            "plan": e.variant.plan.to_string(),
        })).collect::<Vec<_>>(),
        "sweeps": args.sweep.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "ctx": args.ctx,
        "chunks": r.chunks,
        "batch": args.batch,
        "patchbay_version": env!("CARGO_PKG_VERSION"),
        "threads": patchbay_primitives::Threads::clamp(args.threads).0,
        "simd": patchbay_primitives::Simd::detect().level().name(),
        "command_line": std::env::args().collect::<Vec<_>>(),
    });
    put(
        "manifest.json",
        format!("{}\n", serde_json::to_string_pretty(&manifest)?).as_bytes(),
    )?;
    write_charts(dir, &plot_points(entries, r))
}

/// One variant of a sweep, as a plot shows it.
struct PlotPoint {
    sweep: Sweep,
    /// The layer it is plotted against.
    layer: usize,
    /// `sum` or `mean` for parallel pairs, else empty.
    merge: &'static str,
    /// The variant's perplexity over the baseline's.
    ppl_ratio: f64,
}

fn merge_of(name: &str) -> &'static str {
    if name.ends_with("/mean") {
        "mean"
    } else if name.ends_with("/sum") {
        "sum"
    } else {
        ""
    }
}

/// The plot points of a finished run.
fn plot_points(entries: &[Entry], r: &RewireReport) -> Vec<PlotPoint> {
    let base = r.baseline.ppl.ppl();
    entries
        .iter()
        .zip(&r.variants)
        .filter_map(|(e, st)| {
            Some(PlotPoint {
                sweep: e.sweep?,
                layer: e.variant.layer?,
                merge: merge_of(&e.variant.name),
                ppl_ratio: st.ppl.ppl() / base,
            })
        })
        .collect()
}

/// The plots of the sweeps that ran: perplexity over the baseline's, on a
/// log scale (one dropped first layer can cost 1000x, a middle one 1.2x),
/// against the layer for `drop`, `drop-span`, `repeat` and `prefix`;
/// heatmaps for swaps and parallel pairs.
fn charts(points: &[PlotPoint]) -> Vec<plot::Chart> {
    let mut sweeps: Vec<Sweep> = points.iter().map(|p| p.sweep).collect();
    sweeps.dedup();
    let mut out = Vec::new();
    for sweep in sweeps {
        let points: Vec<&PlotPoint> = points.iter().filter(|p| p.sweep == sweep).collect();
        let file = sweep.to_string().replace([':', '-'], "_");
        let title = format!("{sweep}: perplexity / baseline perplexity");
        match sweep {
            Sweep::Drop | Sweep::DropSpan(_) | Sweep::Repeat | Sweep::Prefix => {
                let x_label = match sweep {
                    Sweep::Prefix => "layers kept (first n)",
                    Sweep::DropSpan(_) => "first dropped layer",
                    _ => "layer",
                };
                out.push(plot::Chart::line(
                    &file,
                    &title,
                    x_label,
                    "log10(PPL / baseline PPL)",
                    points
                        .iter()
                        .map(|p| (p.layer, p.ppl_ratio.log10()))
                        .collect(),
                ));
            }
            Sweep::SwapAdjacent | Sweep::ParallelPairs => {
                let rows: Vec<String> = match sweep {
                    Sweep::SwapAdjacent => vec!["swap".into()],
                    _ => vec!["sum".into(), "mean".into()],
                };
                let cells = points
                    .iter()
                    .map(|p| {
                        let row = rows.iter().position(|r| r == p.merge).unwrap_or(0);
                        (row, p.layer, p.ppl_ratio.log10())
                    })
                    .collect();
                out.push(plot::Chart::heatmap(
                    &file,
                    &title,
                    "first layer of the pair",
                    "log10 ratio",
                    rows,
                    cells,
                ));
            }
            Sweep::ReverseMiddle(..) => {}
        }
    }
    out
}

fn write_charts(dir: &Path, points: &[PlotPoint]) -> Result<()> {
    for chart in charts(points) {
        for (ext, bytes) in [("svg", chart.svg().into_bytes()), ("png", chart.png()?)] {
            let p = dir.join(format!("{}.{ext}", chart.file));
            std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
        }
    }
    Ok(())
}

/// Splits one line of our own results.csv (fields quoted when they hold a
/// comma or a quote).
fn csv_fields(line: &str) -> Vec<String> {
    let (mut out, mut field, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    out.push(field);
    out
}

/// `rewire --replot DIR`: redraws the plots of a finished run from its
/// results.csv, without the model.
pub fn replot(dir: &Path) -> Result<()> {
    let path = dir.join("results.csv");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--replot: reading {}", path.display()))?;
    let bad = |why: String| anyhow::anyhow!("--replot: {}: {why}", path.display());
    let mut lines = text.lines();
    let header = csv_fields(lines.next().unwrap_or_default());
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| bad(format!("no column {name:?}")))
    };
    let (c_variant, c_source, c_apps, c_ppl) = (
        col("variant")?,
        col("source")?,
        col("layer_applications")?,
        col("ppl")?,
    );
    let rows: Vec<Vec<String>> = lines.map(csv_fields).collect();
    let field = |row: &[String], c: usize| row.get(c).cloned().unwrap_or_default();
    let base = rows
        .iter()
        .find(|r| field(r, c_source) == "baseline")
        .ok_or_else(|| bad("no baseline row".into()))?;
    let number = |v: String| {
        v.parse::<f64>()
            .map_err(|_| bad(format!("{v:?} is not a number")))
    };
    let n_layers = field(base, c_apps)
        .parse::<usize>()
        .map_err(|_| bad("the baseline's layer_applications is not a count".into()))?;
    let base_ppl = number(field(base, c_ppl))?;
    let mut points = Vec::new();
    let mut variants: Vec<(Sweep, Vec<Variant>)> = Vec::new();
    for row in &rows {
        let Ok(sweep) = field(row, c_source).parse::<Sweep>() else {
            continue;
        };
        if !variants.iter().any(|(s, _)| *s == sweep) {
            variants.push((
                sweep,
                sweep.variants(n_layers).map_err(|e| bad(e.to_string()))?,
            ));
        }
        let name = field(row, c_variant);
        let Some(v) = variants
            .iter()
            .find(|(s, _)| *s == sweep)
            .and_then(|(_, vs)| vs.iter().find(|v| v.name == name))
        else {
            return Err(bad(format!("{name:?} is not a variant of --sweep {sweep}")));
        };
        if let Some(layer) = v.layer {
            points.push(PlotPoint {
                sweep,
                layer,
                merge: merge_of(&name),
                ppl_ratio: number(field(row, c_ppl))? / base_ppl,
            });
        }
    }
    if points.is_empty() {
        return Err(bad("no sweep variants to plot".into()));
    }
    write_charts(dir, &points)
}
