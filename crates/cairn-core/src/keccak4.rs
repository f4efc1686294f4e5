//! Keccak-256 of many short messages, four at a time: each 64-bit lane of an x86-64 vector
//! register carries one message's state word, so one pass of the permutation hashes four.
//!
//! Checking a batch of receipts is mostly Keccak (seven permutations a receipt: the struct
//! hash, the EIP-712 digest, OpenZeppelin's double-hashed leaf and its share of the tree), and
//! one message's permutation is a chain of dependent steps that leaves most of a core's
//! vector units idle. No maintained crate offers this for Ethereum's Keccak-256 on stable Rust
//! (libcrux-sha3's four-way code is reachable only as SHAKE, whose padding differs; the
//! `keccak` crate's needs nightly `portable_simd`), so the permutation is written here, in
//! FIPS 202's steps, and tested against the scalar hash for every length around the block
//! boundaries.
//!
//! The four-wide permutation runs where the CPU has AVX-512F and AVX-512VL (one-instruction
//! rotations and three-input logic on 256-bit registers): 3.5x the scalar hash's throughput on
//! this project's AMD EPYC test machine. Elsewhere each message is hashed alone: an AVX2
//! version (rotations as two shifts and an or) measured ~10% slower there than the scalar
//! assembly `alloy-primitives` uses, so there is none. Results never depend on the path.

use alloy_primitives::{B256, keccak256};

/// Keccak-256's rate in bytes: the part of the 200-byte state a block is absorbed into.
const RATE: usize = 136;

/// The iota step's round constants.
const RC: [u64; 24] = [
    0x0000_0000_0000_0001,
    0x0000_0000_0000_8082,
    0x8000_0000_0000_808A,
    0x8000_0000_8000_8000,
    0x0000_0000_0000_808B,
    0x0000_0000_8000_0001,
    0x8000_0000_8000_8081,
    0x8000_0000_0000_8009,
    0x0000_0000_0000_008A,
    0x0000_0000_0000_0088,
    0x0000_0000_8000_8009,
    0x0000_0000_8000_000A,
    0x0000_0000_8000_808B,
    0x8000_0000_0000_008B,
    0x8000_0000_0000_8089,
    0x8000_0000_0000_8003,
    0x8000_0000_0000_8002,
    0x8000_0000_0000_0080,
    0x0000_0000_0000_800A,
    0x8000_0000_8000_000A,
    0x8000_0000_8000_8081,
    0x8000_0000_0000_8080,
    0x0000_0000_8000_0001,
    0x8000_0000_8000_8008,
];

/// The rho step's rotation of lane `x + 5y`.
const RHO: [u32; 25] = [
    0, 1, 62, 28, 27, //
    36, 44, 6, 55, 20, //
    3, 10, 43, 25, 39, //
    41, 45, 15, 21, 8, //
    18, 2, 61, 56, 14,
];

/// The Keccak-256 of each of `inputs`, in order, into `out` (as long as `inputs`). Messages of
/// equal length are hashed four at a time where the CPU allows; the rest one by one.
pub fn keccak256_many(inputs: &[&[u8]], out: &mut [B256]) {
    many_with(inputs, out, four_wide(), keccak256_x4);
}

/// [`keccak256_many`] with the four-wide hash `x4` (given equal lengths), used for runs of two
/// or more equal-length messages when `wide`.
fn many_with(inputs: &[&[u8]], out: &mut [B256], wide: bool, x4: impl Fn([&[u8]; 4]) -> [B256; 4]) {
    assert_eq!(inputs.len(), out.len(), "one output per input");
    let mut i = 0;
    while i < inputs.len() {
        let len = inputs[i].len();
        let run = inputs[i..].iter().take_while(|m| m.len() == len).count();
        let mut j = i;
        while wide && run - (j - i) >= 2 {
            // A short run fills its spare lanes with its last message (hashed, not used).
            let lane = |k: usize| inputs[(j + k).min(i + run - 1)];
            let h = x4([lane(0), lane(1), lane(2), lane(3)]);
            let take = (run - (j - i)).min(4);
            out[j..j + take].copy_from_slice(&h[..take]);
            j += take;
        }
        for k in j..i + run {
            out[k] = keccak256(inputs[k]);
        }
        i += run;
    }
}

/// The Keccak-256 of four messages. Equal lengths go through the four-wide permutation where
/// the CPU has one; otherwise each is hashed alone.
pub fn keccak256_x4(inputs: [&[u8]; 4]) -> [B256; 4] {
    let len = inputs[0].len();
    if inputs.iter().all(|m| m.len() == len) {
        #[cfg(target_arch = "x86_64")]
        {
            if four_wide() {
                // SAFETY: the CPU has AVX-512F and AVX-512VL (what `four_wide` checks).
                return unsafe { x86::hash_avx512(inputs) };
            }
        }
    }
    inputs.map(keccak256)
}

/// Whether [`keccak256_x4`] runs four abreast on this CPU (else it is four scalar hashes).
pub fn four_wide() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The 17 lanes of each of four messages' block at `offset`; the last block padded as Keccak
/// pads it (`0x01` after the message, `0x80` in the rate's last byte).
fn padded_lanes(inputs: &[&[u8]; 4], offset: usize, last: bool) -> [[u64; RATE / 8]; 4] {
    let mut lanes = [[0u64; RATE / 8]; 4];
    for (m, lanes) in inputs.iter().zip(&mut lanes) {
        let mut block = [0u8; RATE];
        let end = m.len().min(offset + RATE);
        block[..end - offset].copy_from_slice(&m[offset..end]);
        if last {
            block[end - offset] ^= 0x01;
            block[RATE - 1] ^= 0x80;
        }
        for (k, lane) in lanes.iter_mut().enumerate() {
            *lane = u64::from_le_bytes(block[8 * k..8 * k + 8].try_into().expect("8 bytes"));
        }
    }
    lanes
}

/// One 256-bit register of four state words, one per message.
trait Lanes: Copy {
    fn splat(x: u64) -> Self;
    fn from_words(w: [u64; 4]) -> Self;
    fn words(self) -> [u64; 4];
    fn xor(self, o: Self) -> Self;
    /// `self ^ b ^ c`.
    fn xor3(self, b: Self, c: Self) -> Self;
    /// The chi step: `self ^ (!b & c)`.
    fn chi(self, b: Self, c: Self) -> Self;
    fn rol(self, n: u32) -> Self;
}

/// Keccak-f[1600] on four states at once.
#[inline(always)]
fn permute<V: Lanes>(a: &mut [V; 25]) {
    for rc in RC {
        // theta (plain loops, not closures: everything must inline into the caller that has
        // the vector features enabled)
        let mut c = [V::splat(0); 5];
        for x in 0..5 {
            c[x] = a[x].xor3(a[x + 5], a[x + 10]).xor3(a[x + 15], a[x + 20]);
        }
        let mut d = [V::splat(0); 5];
        for x in 0..5 {
            d[x] = c[(x + 4) % 5].xor(c[(x + 1) % 5].rol(1));
        }
        // rho and pi: lane (x, y) rotated to (y, 2x + 3y)
        let mut b = [V::splat(0); 25];
        for y in 0..5 {
            for x in 0..5 {
                let i = x + 5 * y;
                b[y + 5 * ((2 * x + 3 * y) % 5)] = a[i].xor(d[x]).rol(RHO[i]);
            }
        }
        // chi
        for y in 0..5 {
            for x in 0..5 {
                a[x + 5 * y] = b[x + 5 * y].chi(b[(x + 1) % 5 + 5 * y], b[(x + 2) % 5 + 5 * y]);
            }
        }
        // iota
        a[0] = a[0].xor(V::splat(rc));
    }
}

/// The sponge over four messages of one length (a caller's promise: another length would be
/// hashed wrong or panic): absorb every block, squeeze 32 bytes each.
#[inline(always)]
fn sponge<V: Lanes>(inputs: [&[u8]; 4]) -> [B256; 4] {
    let len = inputs[0].len();
    debug_assert!(inputs.iter().all(|m| m.len() == len), "equal lengths");
    let mut a = [V::splat(0); 25];
    // A message of a whole number of blocks still takes a block of padding alone.
    let blocks = len / RATE + 1;
    for blk in 0..blocks {
        let last = blk + 1 == blocks;
        let offset = blk * RATE;
        let lanes = padded_lanes(&inputs, offset, last);
        for (k, word) in a.iter_mut().take(RATE / 8).enumerate() {
            *word = word.xor(V::from_words([
                lanes[0][k],
                lanes[1][k],
                lanes[2][k],
                lanes[3][k],
            ]));
        }
        permute(&mut a);
    }
    let mut out = [[0u8; 32]; 4];
    for k in 0..4 {
        for (m, w) in a[k].words().into_iter().enumerate() {
            out[m][8 * k..8 * k + 8].copy_from_slice(&w.to_le_bytes());
        }
    }
    out.map(B256::from)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// AVX-512VL on 256-bit registers: one-instruction rotations and three-input logic.
    #[derive(Clone, Copy)]
    struct Avx512(__m256i);

    /// `_mm256_ternarylogic_epi64`'s table for `a ^ b ^ c` (operands' bits as Intel numbers
    /// them: a = 0xF0, b = 0xCC, c = 0xAA).
    pub(super) const XOR3: i32 = 0xF0 ^ 0xCC ^ 0xAA;
    /// Its table for the chi step, `a ^ (!b & c)`.
    pub(super) const CHI: i32 = (0xF0 ^ (!0xCC & 0xAA)) & 0xFF;

    // SAFETY (every `unsafe` block below): the type is built only inside `hash_avx512`,
    // which runs only once the CPU has been found to have the features its intrinsics need;
    // loads and stores go through arrays of four `u64`.
    impl Lanes for Avx512 {
        #[inline(always)]
        fn splat(x: u64) -> Self {
            Avx512(unsafe { _mm256_set1_epi64x(x as i64) })
        }
        #[inline(always)]
        fn from_words(w: [u64; 4]) -> Self {
            Avx512(unsafe { _mm256_loadu_si256(w.as_ptr().cast()) })
        }
        #[inline(always)]
        fn words(self) -> [u64; 4] {
            let mut w = [0u64; 4];
            unsafe { _mm256_storeu_si256(w.as_mut_ptr().cast(), self.0) };
            w
        }
        #[inline(always)]
        fn xor(self, o: Self) -> Self {
            Avx512(unsafe { _mm256_xor_si256(self.0, o.0) })
        }
        #[inline(always)]
        fn xor3(self, b: Self, c: Self) -> Self {
            Avx512(unsafe { _mm256_ternarylogic_epi64::<XOR3>(self.0, b.0, c.0) })
        }
        #[inline(always)]
        fn chi(self, b: Self, c: Self) -> Self {
            Avx512(unsafe { _mm256_ternarylogic_epi64::<CHI>(self.0, b.0, c.0) })
        }
        #[inline(always)]
        fn rol(self, n: u32) -> Self {
            Avx512(unsafe { _mm256_rolv_epi64(self.0, _mm256_set1_epi64x(i64::from(n))) })
        }
    }

    /// # Safety
    /// The CPU must have AVX-512F and AVX-512VL.
    #[target_feature(enable = "avx2,avx512f,avx512vl")]
    pub(super) unsafe fn hash_avx512(inputs: [&[u8]; 4]) -> [B256; 4] {
        debug_assert!(four_wide(), "called only where the CPU has the features");
        sponge::<Avx512>(inputs)
    }
}

/// Four scalar words per "register": the reference the vector backends are tested against
/// (the permutation's code path, without the vector instructions).
#[cfg(test)]
#[derive(Clone, Copy)]
struct Plain([u64; 4]);

#[cfg(test)]
impl Lanes for Plain {
    fn splat(x: u64) -> Self {
        Plain([x; 4])
    }
    fn from_words(w: [u64; 4]) -> Self {
        Plain(w)
    }
    fn words(self) -> [u64; 4] {
        self.0
    }
    fn xor(self, o: Self) -> Self {
        Plain(std::array::from_fn(|i| self.0[i] ^ o.0[i]))
    }
    fn xor3(self, b: Self, c: Self) -> Self {
        self.xor(b).xor(c)
    }
    fn chi(self, b: Self, c: Self) -> Self {
        Plain(std::array::from_fn(|i| self.0[i] ^ (!b.0[i] & c.0[i])))
    }
    fn rol(self, n: u32) -> Self {
        Plain(self.0.map(|w| w.rotate_left(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four different messages of length `len`.
    fn messages(len: usize) -> [Vec<u8>; 4] {
        std::array::from_fn(|m| {
            (0..len)
                .map(|i| {
                    (i as u8)
                        .wrapping_mul(31)
                        .wrapping_add((m as u8).wrapping_mul(101))
                        ^ (len as u8)
                })
                .collect()
        })
    }

    /// Messages of the given lengths, each different from the others.
    fn messages_of(lens: &[usize], salt: u8) -> Vec<Vec<u8>> {
        lens.iter()
            .enumerate()
            .map(|(i, &len)| {
                (0..len)
                    .map(|b| (b as u8) ^ (i as u8).wrapping_mul(salt))
                    .collect()
            })
            .collect()
    }

    /// Lengths around every boundary the sponge has (empty, a lane, a block, two blocks).
    fn lengths() -> impl Iterator<Item = usize> {
        (0..=3 * RATE + 2)
            .filter(|l| l % 8 <= 1 || l % 8 == 7 || l % RATE <= 1 || l % RATE == RATE - 1)
            .chain([32, 64, 66, 320, 416])
    }

    #[test]
    fn the_four_wide_sponge_is_keccak256_at_every_length() {
        for len in lengths() {
            let m = messages(len);
            let refs = [&m[0][..], &m[1][..], &m[2][..], &m[3][..]];
            let want = refs.map(keccak256);
            assert_eq!(sponge::<Plain>(refs), want, "portable lanes, length {len}");
            assert_eq!(keccak256_x4(refs), want, "dispatched, length {len}");
            #[cfg(target_arch = "x86_64")]
            {
                if four_wide() {
                    assert_eq!(
                        // SAFETY: the CPU has the features (checked just above).
                        unsafe { x86::hash_avx512(refs) },
                        want,
                        "AVX-512, length {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn known_answers() {
        // Keccak-256 of "" and of "abc" (Ethereum's, not SHA3-256).
        let empty: B256 = "0xc5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
            .parse()
            .unwrap();
        let abc: B256 = "0x4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"
            .parse()
            .unwrap();
        assert_eq!(keccak256_x4([b"", b"", b"", b""]), [empty; 4]);
        assert_eq!(keccak256_x4([b"abc"; 4]), [abc; 4]);
    }

    #[test]
    fn many_hashes_every_input_in_order_whatever_the_lengths() {
        let owned = messages_of(
            &[
                66, 66, 66, 66, 66, 32, 66, 66, 320, 320, 320, 0, 137, 137, 137, 137, 137, 137, 137,
            ],
            7,
        );
        for n in 0..=owned.len() {
            let inputs: Vec<&[u8]> = owned[..n].iter().map(Vec::as_slice).collect();
            let mut out = vec![B256::ZERO; n];
            keccak256_many(&inputs, &mut out);
            let want: Vec<B256> = inputs.iter().map(keccak256).collect();
            assert_eq!(out, want, "first {n} inputs");
        }
    }

    /// The grouping into fours, on any CPU: through the portable lanes, every run length.
    #[test]
    fn grouping_into_fours_hashes_every_input_in_order() {
        let owned = messages_of(
            &[5, 5, 5, 5, 5, 5, 5, 9, 5, 5, 5, 5, 200, 200, 200, 0, 5],
            13,
        );
        for n in 0..=owned.len() {
            let inputs: Vec<&[u8]> = owned[..n].iter().map(Vec::as_slice).collect();
            let want: Vec<B256> = inputs.iter().map(keccak256).collect();
            let calls = std::cell::Cell::new(0);
            let mut out = vec![B256::ZERO; n];
            many_with(&inputs, &mut out, true, |four| {
                calls.set(calls.get() + 1);
                assert!(four.iter().all(|m| m.len() == four[0].len()));
                sponge::<Plain>(four)
            });
            assert_eq!(out, want, "first {n} inputs, four wide");
            if n == owned.len() {
                // Runs of 7, 1, 4, 3, 1, 1: two fours for the first (4 + 3), one each for the
                // 4 and the 3, the single ones alone.
                assert_eq!(calls.get(), 4);
            }
        }
    }

    /// The ternary-logic tables, read the way the instruction reads them: bit
    /// `(a << 2) | (b << 1) | c` of the table is the result for those operand bits.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_ternary_logic_tables_are_the_functions_meant() {
        let table = |imm: i32, a: bool, b: bool, c: bool| {
            (imm >> ((usize::from(a) << 2) | (usize::from(b) << 1) | usize::from(c))) & 1 == 1
        };
        for bits in 0..8u8 {
            let (a, b, c) = (bits & 4 != 0, bits & 2 != 0, bits & 1 != 0);
            assert_eq!(table(x86::XOR3, a, b, c), a ^ b ^ c);
            assert_eq!(table(x86::CHI, a, b, c), a ^ (!b & c));
        }
    }

    #[test]
    fn unequal_lengths_are_hashed_one_by_one() {
        let (a, b) = (messages(66), messages(65));
        let refs = [&a[0][..], &b[1][..], &a[2][..], &a[3][..]];
        assert_eq!(keccak256_x4(refs), refs.map(keccak256));
    }
}
