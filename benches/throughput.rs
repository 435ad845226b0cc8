//! Transform throughput vs. the parse+serialise baseline.
//!
//! `cargo bench --bench throughput [-- EVENTS RUNS]` (defaults 100000 events, 7 runs).
//! Generates the seeded corpus in memory, then measures events/s for:
//! - baseline: parse each line into `serde_json::Value` and serialise it back;
//! - transform, 1 thread: parse → compiled `examples/ecommerce` rules → serialised SFMC
//!   call bodies;
//! - transform, all cores: the same, lines split across threads.
//!
//! Prints medians with min/max of the runs, and the ratios the targets are stated in.

use sfmc_relay::corpus::{self, CorpusConfig};

// The same allocator as the `sfmc-relay` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use sfmc_relay::rules;
use sfmc_relay::transform::{Outcome, Trace, transform_view};
use sfmc_relay::view::Val;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

fn median_spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn baseline(lines: &[String]) -> usize {
    let mut bytes = 0;
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        bytes += serde_json::to_vec(&v).unwrap().len();
    }
    bytes
}

fn transform_lines(program: &rules::Program, lines: &[String]) -> usize {
    let mut bytes = 0;
    for l in lines {
        let v: Val = serde_json::from_str(l).unwrap();
        if let Outcome::Actions(actions) = transform_view(program, &v, &mut Trace::off()) {
            for a in &actions {
                bytes += serde_json::to_vec(&a.body()).unwrap().len();
            }
        }
    }
    bytes
}

fn rate(n: usize, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    let cfg = CorpusConfig {
        events: n,
        users: (n / 50).max(1),
        seed: 1,
    };
    let lines: Vec<String> = (0..n).map(|i| corpus::event(&cfg, i).to_string()).collect();
    let avg = lines.iter().map(String::len).sum::<usize>() / lines.len();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ecommerce/rules");
    let program = rules::load(Some(&dir), &sfmc_relay::env::Env::process(), 1)
        .expect("rules")
        .program;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // For instruction counts under valgrind: `BENCH_ONLY=baseline|transform`.
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("baseline") => {
            black_box(baseline(&lines));
            return;
        }
        Ok("transform") => {
            black_box(transform_lines(&program, &lines));
            return;
        }
        _ => {}
    }

    let on_threads = |f: fn(&rules::Program, &[String]) -> usize| {
        let chunk = lines.len().div_ceil(threads);
        std::thread::scope(|s| {
            for part in lines.chunks(chunk) {
                let p = &program;
                s.spawn(move || black_box(f(p, part)));
            }
        });
    };
    let (mut base, mut base_all, mut one, mut all) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        base.push(rate(lines.len(), || {
            black_box(baseline(&lines));
        }));
        // The machine's own scaling on this work: the baseline on all cores.
        base_all.push(rate(lines.len(), || on_threads(|_, l| baseline(l))));
        one.push(rate(lines.len(), || {
            black_box(transform_lines(&program, &lines));
        }));
        all.push(rate(lines.len(), || on_threads(transform_lines)));
    }
    // Paired: each run's ratios use figures measured back to back, so drift in the
    // machine's speed between runs (this VM's neighbours) cancels out.
    let paired =
        |num: &[f64], den: &[f64]| median_spread(num.iter().zip(den).map(|(n, d)| n / d).collect());
    let (pr, prmin, prmax) = paired(&one, &base);
    let (ps, psmin, psmax) = paired(&all, &one);
    let (pm, pmmin, pmmax) = paired(&base_all, &base);
    let (b, bmin, bmax) = median_spread(base);
    let (ba, bamin, bamax) = median_spread(base_all);
    let (o, omin, omax) = median_spread(one);
    let (a, amin, amax) = median_spread(all);
    println!("corpus: {n} events, {avg} bytes average, {runs} runs, {threads} threads");
    println!(
        "baseline parse+serialise, 1 thread: {b:>10.0} events/s (min {bmin:.0}, max {bmax:.0})"
    );
    println!(
        "baseline parse+serialise, {threads} threads: {ba:>10.0} events/s (min {bamin:.0}, max {bamax:.0})"
    );
    println!(
        "transform, 1 thread:                {o:>10.0} events/s (min {omin:.0}, max {omax:.0})"
    );
    println!(
        "transform, {threads} threads:              {a:>10.0} events/s (min {amin:.0}, max {amax:.0})"
    );
    println!(
        "ratio transform/baseline (1 thread): {:.2} (target >= 0.7)",
        o / b
    );
    println!(
        "scaling {threads} threads / 1 thread:      {:.2} (target >= 1.7 on 2 cores; the baseline itself scales {:.2})",
        a / o,
        ba / b
    );
    println!(
        "paired per run (median, min-max): ratio {pr:.2} ({prmin:.2}-{prmax:.2}), scaling {ps:.2} ({psmin:.2}-{psmax:.2}), baseline scaling {pm:.2} ({pmmin:.2}-{pmmax:.2})"
    );
}
