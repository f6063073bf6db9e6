//! Masking throughput: how fast step output passes through a [`Masker`].
//!
//! Every byte a job prints goes through the masker, so it must not become the
//! bottleneck of a chatty build. This measures, on 16 MiB of build-log-like text with
//! a few secrets sprinkled in, masking the whole buffer and streaming it in 4 KiB
//! chunks, for 1, 10 and 50 secrets, against a plain copy of the same bytes (the cost
//! of not masking at all). Run: `cargo bench -p runner-agent --bench mask`
//! (`-- --rounds N` to change the number of rounds; medians are printed).
//!
//! On the 2-core development machine (shared with concurrent builds), masking ran at
//! about 430-500 MiB/s for 1, 10 and 50 secrets alike, whole buffer or 4 KiB chunks.

use std::time::{Duration, Instant};

use runner_agent::mask::Masker;

const SIZE: usize = 16 << 20;
const CHUNK: usize = 4096;

/// Deterministic log-like text: compiler lines with paths, hashes and base64 noise.
fn log_text(secrets: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIZE + 256);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut line = 0u64;
    while out.len() < SIZE {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        line += 1;
        let text = format!(
            "   Compiling crate-{} v0.{}.{} (/build/src/{:x}/lib.rs) hash={:016x} blob=QUJD{:x}RUZH\n",
            seed % 977,
            seed % 13,
            seed % 7,
            seed >> 40,
            seed,
            seed >> 20
        );
        out.extend_from_slice(text.as_bytes());
        if line.is_multiple_of(5000) && !secrets.is_empty() {
            out.extend_from_slice(b"token=");
            out.extend_from_slice(&secrets[(line as usize / 5000) % secrets.len()]);
            out.push(b'\n');
        }
    }
    out
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn mib_per_s(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / time.as_secs_f64()
}

fn time_rounds(rounds: usize, mut work: impl FnMut() -> usize) -> Duration {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        std::hint::black_box(work());
        samples.push(start.elapsed());
    }
    median(samples)
}

fn main() {
    let mut rounds = 5;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--rounds" {
            rounds = args
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--rounds takes a number");
        }
    }
    println!("masking {} MiB, {rounds} rounds, medians", SIZE >> 20);
    for count in [1usize, 10, 50] {
        let secrets: Vec<Vec<u8>> = (0..count)
            .map(|i| format!("ghp_{i:04}SecretValue{:08x}", i * 7919).into_bytes())
            .collect();
        let text = log_text(&secrets);
        let masker = Masker::new(secrets.iter().map(Vec::as_slice));
        let copy = time_rounds(rounds, || std::hint::black_box(text.to_vec()).len());
        let whole = time_rounds(rounds, || std::hint::black_box(masker.mask(&text)).len());
        let streamed = time_rounds(rounds, || {
            let mut stream = masker.stream();
            let mut total = 0;
            for chunk in text.chunks(CHUNK) {
                total += std::hint::black_box(stream.push(chunk)).len();
            }
            total + stream.finish().len()
        });
        println!(
            "{count:>3} secrets: copy {:>8.0} MiB/s | mask whole {:>7.1} MiB/s ({:.1}x copy time) | \
             stream 4 KiB {:>7.1} MiB/s ({:.1}x copy time)",
            mib_per_s(text.len(), copy),
            mib_per_s(text.len(), whole),
            whole.as_secs_f64() / copy.as_secs_f64(),
            mib_per_s(text.len(), streamed),
            streamed.as_secs_f64() / copy.as_secs_f64(),
        );
    }
}
