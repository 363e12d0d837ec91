//! Replays fuzz/corpus/metrics_text through the `metrics_text` fuzz target's code path
//! (`vmedia_server::scrape::exercise`): no input may panic, the scrapes written with the daemon's
//! metric names must parse into their exports, and the malformed samples must be refused.

#[path = "../../../fuzz/corpus_samples.rs"]
mod corpus_samples;

use std::path::Path;

use vmedia_server::scrape;

fn corpus() -> Vec<(String, Vec<u8>)> {
    corpus_samples::samples("metrics_text", 5)
}

#[test]
fn metrics_text_corpus_replays() {
    let mut refused = Vec::new();
    for (name, data) in corpus() {
        let result = scrape::exercise(&data);
        if name.starts_with("vmedia-") {
            let view = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                view.exports.iter().any(|e| e.row.export == "debian@3"),
                "{name}: {view:?}"
            );
        } else if result.is_err() {
            refused.push(name);
        }
    }
    for malformed in ["bad-escape.prom", "bucket-without-le.prom", "garbage.prom"] {
        assert!(
            refused.iter().any(|n| n == malformed),
            "{malformed} was accepted"
        );
    }
}

/// Prometheus's own parser (`promtool check metrics`) is the oracle: what it cannot parse, the
/// scraper refuses too, and what it parses, the scraper reads, except a histogram bucket without
/// `le`, which promtool only lints and `vmedia top` cannot place.
#[test]
fn scraper_agrees_with_promtool_on_the_corpus() {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("promtool is not installed (Debian package prometheus; scripts/setup.sh)");
    for (name, data) in corpus() {
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), &data).unwrap();
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let promtool_parses = !said.contains("parsing error");
        let we_parse = scrape::parse(&data).is_ok();
        if name == "bucket-without-le.prom" {
            assert!(promtool_parses && !we_parse, "{name}: {said}");
        } else {
            assert_eq!(we_parse, promtool_parses, "{name}: promtool said {said}");
        }
    }
}
