//! The floor `sfmc-relay transform` is measured against: read NDJSON lines, parse each into
//! `serde_json::Value`, serialise it back to stdout, one line each.
//!
//! `cargo build --release --example json_floor`, then
//! `target/release/examples/json_floor [FILE] > /dev/null` (stdin without FILE).
//! Used by `scripts/bench-transform.sh`. Same allocator as the relay (mimalloc); blank or
//! unparsable lines are counted and skipped.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::io::Result<()> {
    let input: Box<dyn Read> = match std::env::args_os().nth(1) {
        Some(p) => Box::new(std::fs::File::open(p)?),
        None => Box::new(std::io::stdin()),
    };
    let mut input = BufReader::with_capacity(256 * 1024, input);
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut line = String::new();
    let (mut lines, mut bad) = (0u64, 0u64);
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            break;
        }
        lines += 1;
        match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v) => {
                serde_json::to_writer(&mut out, &v)?;
                out.write_all(b"\n")?;
            }
            Err(_) => bad += 1,
        }
    }
    out.flush()?;
    eprintln!("json_floor: {lines} lines, {bad} not JSON");
    Ok(())
}
