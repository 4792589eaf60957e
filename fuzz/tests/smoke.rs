//! The fuzz smoke of `make test`: every committed corpus input through its
//! target, then a short seeded mutation run from them (byte flips,
//! inserts, cuts, splices), so a parser that panics on a near miss of a
//! known input fails here, on stable Rust, without libFuzzer. The long runs
//! are `make fuzz`.

use std::path::PathBuf;

use cbs_fuzz::TARGETS;
use cbs_host::random::splitmix;

/// Mutated inputs per target; a fraction of a second each.
const MUTATIONS: u64 = 20_000;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    inputs.sort();
    inputs
}

/// A small deterministic mutator over `seed`.
struct Mutator(u64);

impl Mutator {
    fn next(&mut self, below: usize) -> usize {
        self.0 = splitmix(self.0);
        if below == 0 {
            0
        } else {
            (self.0 % below as u64) as usize
        }
    }

    fn mutate(&mut self, input: &[u8], other: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..=self.next(4) {
            let at = self.next(out.len() + 1);
            match self.next(5) {
                0 if at < out.len() => out[at] ^= 1 << self.next(8),
                1 => out.insert(at, self.next(256) as u8),
                2 if at < out.len() => {
                    let end = at + self.next(out.len() - at + 1);
                    out.drain(at..end);
                }
                3 => {
                    let from = self.next(other.len() + 1);
                    let end = from + self.next(other.len() - from + 1);
                    out.splice(at..at, other[from..end].iter().copied());
                }
                _ => {
                    // Interesting bytes for text formats.
                    let b = b"\0\r\n\"\\{}[]=.-9\xff"[self.next(14)];
                    out.insert(at, b);
                }
            }
        }
        out
    }
}

#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    for (name, target) in TARGETS {
        let inputs = corpus(name);
        assert!(!inputs.is_empty(), "no corpus for {name}");
        for input in &inputs {
            target(input);
        }
        let mut mutator = Mutator(0xcb5_f022);
        for _ in 0..MUTATIONS {
            let input = &inputs[mutator.next(inputs.len())];
            let other = &inputs[mutator.next(inputs.len())];
            let mutated = mutator.mutate(input, other);
            let result = std::panic::catch_unwind(|| target(&mutated));
            assert!(
                result.is_ok(),
                "{name} panicked on {:?}",
                String::from_utf8_lossy(&mutated)
            );
        }
    }
}
