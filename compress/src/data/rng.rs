//! A small, seedable, portable pseudo-random generator (SplitMix64).
//!
//! The loaders need reproducible draws (same seed → same subset, same crops) on every platform
//! and independent of thread scheduling; they do not need cryptographic quality. SplitMix64
//! passes BigCrush, has a 64-bit state, and is trivially derived per (seed, image, crop) key so
//! that parallel workers draw from independent streams.
//!
//! The compression method draws from the same generator ([`Rng::scrambled`] for its seeded
//! validation split, synthetic models and tests; [`Rng::normal`], [`Rng::permutation`]).

/// SplitMix64 generator (Steele, Lea & Flood, 2014).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Offset of the seeds of [`Rng::scrambled`].
const SCRAMBLE: u64 = 0x5851_F42D_4C95_7F2D;

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// A generator seeded with `seed ^ 0x5851_f42d_4c95_7f2d`: the compression method's seeded
    /// draws (validation split, synthetic models, tests), which never replay a loader's
    /// [`Rng::new`] stream of the same seed.
    pub fn scrambled(seed: u64) -> Rng {
        Rng::new(seed ^ SCRAMBLE)
    }

    /// A generator for the stream identified by `seed` and `keys` (e.g. image and crop index):
    /// different key tuples give statistically independent streams.
    pub fn derive(seed: u64, keys: &[u64]) -> Rng {
        let mut state = mix64(seed ^ GOLDEN_GAMMA);
        for &k in keys {
            state = mix64(state.wrapping_add(GOLDEN_GAMMA) ^ mix64(k.wrapping_add(GOLDEN_GAMMA)));
        }
        Rng { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        // 2^-53: every value is exactly representable, the maximum is 1 - 2^-53.
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[low, high)` (or `low` when the range is empty).
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.next_f64()
    }

    /// Uniform integer in `[0, n)` without modulo bias (Lemire's method); 0 when `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(n);
            // The low half decides acceptance, the high half is the draw.
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// `true` with probability `p` (clamped to `[0, 1]`).
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// Standard normal (Box–Muller, one draw per pair of uniforms).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(1e-300);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (core::f64::consts::TAU * u2).cos()
    }

    /// A seeded permutation of `0..n` (Fisher–Yates; each index drawn by multiply-shift of 53
    /// random bits, which defines the method's validation splits).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below_by_multiply(i + 1);
            p.swap(i, j);
        }
        p
    }

    /// Integer in `0..n` (`n > 0`) as `⌊u·n⌋` for a 53-bit uniform `u` (bias below `n / 2^53`).
    fn below_by_multiply(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 11) as u128 * n as u128) >> 53) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // Reference outputs of SplitMix64 seeded with 1234567 (from the published C code).
        let mut r = Rng::new(1234567);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(got, [6457827717110365317, 3203168211198807973, 9817491932198370423]);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = Rng::new(7);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let v = r.below(7);
            assert!(v < 7);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(r.below(0), 0);
        assert_eq!(r.below(1), 0);
    }

    #[test]
    fn derived_streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4).map(|_| Rng::derive(9, &[1, 2]).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::derive(9, &[1, 2]).next_u64(), Rng::derive(9, &[2, 1]).next_u64());
        assert_ne!(Rng::derive(9, &[1]).next_u64(), Rng::derive(10, &[1]).next_u64());
    }

    #[test]
    fn permutation_is_a_permutation_and_repeats() {
        let p = Rng::scrambled(4).permutation(50);
        let mut sorted = p.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(p, Rng::scrambled(4).permutation(50));
        assert_ne!(p, Rng::scrambled(5).permutation(50));
    }

    #[test]
    fn unit_interval() {
        let mut r = Rng::new(3);
        for _ in 0..1000 {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
