//! `patchbay rewire` end to end: reproducible results.csv across thread
//! counts and batch sizes, the plots, and clear errors for bad flags.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn patchbay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run patchbay")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn require(name: &str) {
    if let Err(e) = patchbay_models::catalog::resolve_model(name) {
        panic!("{e}");
    }
}

fn corpus(name: &str) -> String {
    let shared = std::env::var_os("PATCHBAY_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let p = shared.join("corpus").join(name);
    assert!(
        p.is_file(),
        "{} is missing: the shared corpora live in $PATCHBAY_SHARED/corpus",
        p.display()
    );
    p.display().to_string()
}

fn out_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("patchbay-rewire-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn rewire(args: &[&str], dir: &Path) -> (String, PathBuf) {
    let mut all = vec!["rewire"];
    all.extend_from_slice(args);
    let d = dir.display().to_string();
    all.extend_from_slice(&["-o", &d]);
    let o = patchbay(&all);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).lines().all(|l| !l.starts_with("[chunk")),
        "progress lines in a pipe: {}",
        stderr(&o)
    );
    (String::from_utf8(o.stdout).unwrap(), dir.to_path_buf())
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn stories260k_sweeps_are_reproducible_and_plotted() {
    require("stories260k");
    let text = corpus("tinyshakespeare.txt");
    let common = [
        "-m",
        "stories260k",
        "-f",
        &text,
        "--ctx",
        "64",
        "--chunks",
        "3",
        "--sweep",
        "drop",
        "--sweep",
        "repeat",
        "--sweep",
        "parallel-pairs",
        "--sweep",
        "swap-adjacent",
        "--layers",
        "all",
    ];
    let (a_dir, b_dir) = (out_dir("a"), out_dir("b"));
    let mut a_args = common.to_vec();
    a_args.extend_from_slice(&["-t", "1", "--batch", "7"]);
    let (table, a) = rewire(&a_args, &a_dir);
    let mut b_args = common.to_vec();
    b_args.extend_from_slice(&["-t", "2", "--batch", "512"]);
    let (_, b) = rewire(&b_args, &b_dir);
    let csv = read(&a.join("results.csv"));
    assert_eq!(csv, read(&b.join("results.csv")), "results.csv differs");
    // stories260K has 5 layers: baseline + all + 5 drops + 5 repeats
    // + 4 pairs x 2 merges + 4 swaps.
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 1 + 1 + 5 + 5 + 8 + 4, "{csv}");
    let identity: Vec<&str> = rows[1].split(',').collect();
    assert_eq!(
        &identity[4..10],
        &[
            rows[0].split(',').nth(4).unwrap(),
            "0",
            rows[0].split(',').nth(6).unwrap(),
            "0",
            "0",
            "1"
        ],
        "the identity plan is not the baseline: {}",
        rows[1]
    );
    assert!(
        table.contains("| drop 3 |") && table.contains("Spearman"),
        "{table}"
    );
    assert!(read(&a.join("timings.csv")).lines().count() == rows.len() + 1);
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&a.join("manifest.json"))).unwrap();
    assert_eq!(manifest["ctx"], 64);
    assert_eq!(manifest["model_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(manifest["plans"].as_array().unwrap().len(), rows.len() - 1);
    // Plots: valid SVG and PNG of the chart's size with one mark per variant.
    for (file, class, count) in [
        ("drop", "class=\"point\"", 5),
        ("repeat", "class=\"point\"", 5),
        ("parallel_pairs", "class=\"cell\"", 8),
        ("swap_adjacent", "class=\"cell\"", 4),
    ] {
        let svg = read(&a.join(format!("{file}.svg")));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("width=\"900\" height=\"520\""));
        assert_eq!(svg.matches(class).count(), count, "{file}.svg");
        assert!(
            svg.contains("change of perplexity"),
            "no title in {file}.svg"
        );
        let png = std::fs::read(a.join(format!("{file}.png"))).unwrap();
        let info = png::Decoder::new(std::io::Cursor::new(png))
            .read_info()
            .unwrap_or_else(|e| panic!("{file}.png: {e}"));
        assert_eq!((info.info().width, info.info().height), (900, 520));
    }
    for d in [a_dir, b_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn smollm2_drop_span_is_reproducible() {
    require("smollm2-135m");
    let text = corpus("wikitext-2-test.txt");
    let common = [
        "-m",
        "smollm2-135m",
        "-f",
        &text,
        "--ctx",
        "128",
        "--chunks",
        "2",
        "--sweep",
        "drop-span:26",
        "--layers",
        "0-14,(15|16)/mean,17-29",
    ];
    let (a_dir, b_dir) = (out_dir("sa"), out_dir("sb"));
    let mut a_args = common.to_vec();
    a_args.extend_from_slice(&["-t", "1", "--batch", "7"]);
    let (table, a) = rewire(&a_args, &a_dir);
    let mut b_args = common.to_vec();
    b_args.extend_from_slice(&["-t", "2", "--batch", "512"]);
    let (_, b) = rewire(&b_args, &b_dir);
    let csv = read(&a.join("results.csv"));
    assert_eq!(csv, read(&b.join("results.csv")));
    assert_eq!(csv.lines().count(), 2 + 1 + 5, "{csv}");
    assert!(table.contains("| drop-span:26 |"), "{table}");
    for d in [a_dir, b_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn bad_sweeps_are_usage_errors_naming_the_flag() {
    for (args, want) in [
        (&["--sweep", "dorp"][..], "--sweep"),
        (&["--sweep", "drop-span:0"][..], "--sweep"),
        (&["--sweep", "reverse-middle:5-2"][..], "--sweep"),
    ] {
        let mut all = vec!["rewire", "-f", "x.txt"];
        all.extend_from_slice(args);
        let o = patchbay(&all);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    let o = patchbay(&["rewire", "-f", "x.txt"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--layers") && stderr(&o).contains("--sweep"));
    // A sweep that does not fit the model names the flag too.
    require("stories260k");
    let text = corpus("tinyshakespeare.txt");
    let o = patchbay(&[
        "rewire",
        "-m",
        "stories260k",
        "-f",
        &text,
        "--sweep",
        "drop-span:9",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--sweep drop-span:9"), "{}", stderr(&o));
}
