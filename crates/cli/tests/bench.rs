//! `patchbay bench` like `llama-bench`: comma-separated model, thread,
//! prompt and generation lists, prompt-then-generation tests (`-pg`), every
//! sample in `--json`, mean ± stddev, and tg's bandwidth share of the
//! read-bandwidth probe.

mod support;
use support::*;

#[test]
fn json_holds_every_sample_for_each_thread_count() {
    let path = require("stories260k");
    let out = ok(
        &patchbay(&[
            "bench",
            "-m",
            "stories260k",
            "-t",
            "1,2",
            "-p",
            "8",
            "-n",
            "4",
            "-r",
            "3",
            "--json",
            "--no-probe",
        ]),
        "bench --json",
    );
    let recs: Vec<serde_json::Value> = serde_json::from_str(&out).expect("one JSON array");
    let file_bytes = std::fs::metadata(&path).unwrap().len();
    let tests: Vec<(u64, &str)> = recs
        .iter()
        .map(|r| (r["threads"].as_u64().unwrap(), r["test"].as_str().unwrap()))
        .collect();
    assert_eq!(
        tests,
        [(1, "pp8"), (1, "tg4"), (2, "pp8"), (2, "tg4")],
        "{out}"
    );
    for r in &recs {
        let samples: Vec<f64> = r["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(samples.len(), 3, "{r}");
        assert!(samples.iter().all(|&s| s.is_finite() && s > 0.0), "{r}");
        let mean = samples.iter().sum::<f64>() / 3.0;
        let sd = (samples.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / 2.0).sqrt();
        assert!(
            (r["mean"].as_f64().unwrap() - mean).abs() <= 1e-9 * mean,
            "{r}"
        );
        assert!(
            (r["stddev"].as_f64().unwrap() - sd).abs() <= 1e-9 * mean.max(1.0),
            "{r}"
        );
        assert_eq!(r["file_bytes"].as_u64().unwrap(), file_bytes, "{r}");
        let tg = r["test"] == "tg4";
        assert_eq!(r.get("bandwidth_gbs").is_some(), tg, "{r}");
        if tg {
            let bw = r["bandwidth_gbs"].as_f64().unwrap();
            assert!(
                (bw - file_bytes as f64 * mean / 1e9).abs() <= 1e-9 * bw,
                "{r}"
            );
            assert!(r.get("probe_gbs").is_none(), "--no-probe: {r}");
        }
    }
}

#[test]
fn table_shows_mean_stddev_and_the_bandwidth_share() {
    require("stories260k");
    let out = ok(
        &patchbay(&[
            "bench",
            "-m",
            "stories260k,stories260k",
            "-t",
            "1",
            "-p",
            "4",
            "-n",
            "4",
            "-r",
            "2",
        ]),
        "bench",
    );
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("stories260K")).collect();
    assert_eq!(rows.len(), 4, "two models x (pp, tg): {out}");
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | model | threads | simd | test | throughput | GB/s | of probe |
        let (mean, sd) = cells[5]
            .trim_end_matches(" t/s")
            .split_once(" ± ")
            .unwrap_or_else(|| panic!("mean ± sd in {row}"));
        assert!(
            mean.parse::<f64>().unwrap() > 0.0 && sd.parse::<f64>().unwrap() >= 0.0,
            "{row}"
        );
        if cells[4] == "tg4" {
            let bw: f64 = cells[6].parse().unwrap();
            let share: f64 = cells[7].trim_end_matches('%').parse().unwrap();
            assert!(bw > 0.0 && share > 0.0, "{row}");
        } else {
            assert!(cells[6].is_empty() && cells[7].is_empty(), "{row}");
        }
    }
    let probe = out
        .lines()
        .find(|l| l.starts_with("read-bandwidth probe: "))
        .unwrap_or_else(|| panic!("no probe line: {out}"));
    let gbs: f64 = probe["read-bandwidth probe: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(gbs > 0.1, "{probe}");
}

#[test]
fn depths_run_each_test_after_that_many_tokens() {
    require("stories260k");
    let out = ok(
        &patchbay(&[
            "bench",
            "-m",
            "stories260k",
            "-d",
            "0,40",
            "-p",
            "8",
            "-n",
            "4",
            "-r",
            "2",
            "--json",
            "--no-probe",
        ]),
        "bench -d",
    );
    let recs: Vec<serde_json::Value> = serde_json::from_str(&out).expect("one JSON array");
    let tests: Vec<(&str, u64)> = recs
        .iter()
        .map(|r| (r["test"].as_str().unwrap(), r["depth"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        tests,
        [("pp8", 0), ("tg4", 0), ("pp8 @ d40", 40), ("tg4 @ d40", 40)],
        "{out}"
    );
    for r in &recs {
        let samples = r["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 2, "{r}");
        assert!(samples.iter().all(|s| s.as_f64().unwrap() > 0.0), "{r}");
        // At depth the KV cache is read besides the file: no file-based share.
        assert_eq!(r.get("bandwidth_gbs").is_some(), r["test"] == "tg4", "{r}");
    }
    // stories260K holds 512 positions: the deepest depth counts.
    let o = patchbay(&[
        "bench",
        "-m",
        "stories260k",
        "-d",
        "0,505",
        "-p",
        "8",
        "-n",
        "4",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("-d 505 + -p 8 = 513 tokens do not fit the model's context"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(!stdout.contains("stories260K"), "nothing timed: {stdout}");
}

#[test]
fn each_kv_cache_type_is_benchmarked_in_turn() {
    require("stories260k");
    let args = [
        "bench",
        "-m",
        "stories260k",
        "-t",
        "1",
        "-p",
        "8",
        "-n",
        "4",
        "-d",
        "16",
        "-r",
        "2",
        "--ctk",
        "f32,f16",
        "--ctv",
        "f16",
        "--no-probe",
    ];
    let out = ok(
        &patchbay(&[&args[..], &["--json"]].concat()),
        "bench --ctk --json",
    );
    let recs: Vec<serde_json::Value> = serde_json::from_str(&out).expect("one JSON array");
    let got: Vec<(&str, &str, &str)> = recs
        .iter()
        .map(|r| {
            (
                r["test"].as_str().unwrap(),
                r["type_k"].as_str().unwrap(),
                r["type_v"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("pp8 @ d16", "f32", "f16"),
            ("tg4 @ d16", "f32", "f16"),
            ("pp8 @ d16", "f16", "f16"),
            ("tg4 @ d16", "f16", "f16"),
        ],
        "{out}"
    );
    let table = ok(&patchbay(&args), "bench --ctk");
    for want in [
        "| tg4 @ d16 (k f32, v f16) |",
        "| tg4 @ d16 (k f16, v f16) |",
    ] {
        assert!(table.contains(want), "{want:?} in:\n{table}");
    }
}

#[test]
fn bad_lists_are_usage_errors() {
    for (args, says) in [
        (&["bench", "-t", "1,x"][..], "--threads"),
        (&["bench", "--ctk", "f16,q4_0"][..], "--cache-type-k"),
        (&["bench", "-t", "1,-2"][..], "--threads"),
        (&["bench", "-d", "0,x"][..], "--depth"),
        (
            &["bench", "-m", "stories260k,nosuchmodel", "-r", "1"][..],
            "nosuchmodel",
        ),
    ] {
        let o = patchbay(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{args:?}: {err}");
        assert!(
            o.stdout.is_empty(),
            "{args:?}: nothing timed before the error"
        );
    }
}

#[test]
fn prompt_and_generation_lists_and_pg_tests_run_in_turn() {
    require("stories260k");
    let out = ok(
        &patchbay(&[
            "bench",
            "-m",
            "stories260k",
            "-t",
            "1",
            "-p",
            "8,0,16",
            "-n",
            "4,2",
            "-pg",
            "8,4",
            "--pg",
            "3,5",
            "-d",
            "0,32",
            "-r",
            "2",
            "--json",
            "--no-probe",
        ]),
        "bench -p, -n lists and -pg",
    );
    let recs: Vec<serde_json::Value> = serde_json::from_str(&out).expect("one JSON array");
    let got: Vec<(&str, u64, u64, u64)> = recs
        .iter()
        .map(|r| {
            (
                r["test"].as_str().unwrap(),
                r["n_prompt"].as_u64().unwrap(),
                r["n_gen"].as_u64().unwrap(),
                r["depth"].as_u64().unwrap(),
            )
        })
        .collect();
    // Each depth runs the pp tests, the tg tests, then the pg tests, in the
    // order given; a count of 0 is no test.
    let mut want = Vec::new();
    for (depth, at) in [(0, ""), (32, " @ d32")] {
        for (name, pp, tg) in [
            ("pp8", 8, 0),
            ("pp16", 16, 0),
            ("tg4", 0, 4),
            ("tg2", 0, 2),
            ("pp8+tg4", 8, 4),
            ("pp3+tg5", 3, 5),
        ] {
            want.push((format!("{name}{at}"), pp, tg, depth));
        }
    }
    let want: Vec<(&str, u64, u64, u64)> = want
        .iter()
        .map(|(n, p, t, d)| (n.as_str(), *p, *t, *d))
        .collect();
    assert_eq!(got, want, "{out}");
    for r in &recs {
        let samples = r["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 2, "{r}");
        assert!(samples.iter().all(|s| s.as_f64().unwrap() > 0.0), "{r}");
        // Only a pure tg test at depth 0 reads just the file per token.
        let tg_only = r["n_prompt"] == 0 && r["depth"] == 0;
        assert_eq!(r.get("bandwidth_gbs").is_some(), tg_only, "{r}");
    }
    // llama-bench's single-dash spellings of the cache types run too.
    let table = ok(
        &patchbay(&[
            "bench",
            "-m",
            "stories260k",
            "-p",
            "0",
            "-n",
            "0",
            "-pg",
            "4,2",
            "-ctk",
            "f16",
            "-ctv",
            "f16",
            "-r",
            "1",
            "--no-probe",
        ]),
        "bench -pg -ctk -ctv",
    );
    assert!(table.contains("| pp4+tg2 (k f16, v f16) |"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains("stories260K")).count(),
        1,
        "{table}"
    );
}
