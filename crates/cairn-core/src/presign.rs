//! ECDSA signatures whose nonces are made ahead of time, off the answer's path.
//!
//! Nearly all of an ECDSA signature's cost is the nonce's point `R = k·G`, which does not depend
//! on the message. A [`Presigner`] keeps a pool of nonces with their points, made by a thread of
//! its own in the idle scheduling class ([`crate::run_only_when_idle`]) that gives its CPU up
//! after each nonce; a signature then costs
//! one scalar multiplication and one addition on the caller's path: `s = k⁻¹·z + k⁻¹·r·d`. The
//! total CPU per signature is a little higher than signing outright (the point, an inversion);
//! what moves is when it is spent. Otherwise it signs as [`SigningKey::sign_prehash`] does, with
//! an RFC 6979 nonce: when the pool is empty (the machine is busy and the thread starved), its
//! lock is taken, the nonce was made in another process, or `s` came out zero.
//!
//! The signatures are ordinary ECDSA signatures, low-s with `v` from `R`'s parity, which every
//! Ethereum tool verifies alike. They differ from [`SigningKey::sign_prehash`]'s in one way
//! only: a digest signed twice gets two different valid signatures.
//!
//! A nonce must be secret, unpredictable and used once: one nonce for two digests gives the key
//! away. Each is `SHA-256(tag ‖ d ‖ seed ‖ a process-wide counter)`, the seed hashed from 32
//! bytes from the OS, the process id and the wall and monotonic clocks in nanoseconds, taken
//! afresh for each refill: an OS generator that repeated itself could not repeat a nonce within
//! a process (the counter) nor, short of the same nanosecond, across processes or a restored
//! snapshot (the clocks); nor could anyone predict one without the key. A nonce signs in its
//! pool slot, under the pool's lock, and is overwritten there before the slot is given up: it is
//! never copied, written or put back. A pool copied into another process (`fork`) is thrown
//! away there: each nonce knows the process it was made in. The pool's buffer is allocated once,
//! locked in memory (`mlock`: never written to swap) and left out of core dumps
//! (`MADV_DONTDUMP`), as far as the OS allows (`cairn` also makes its processes non-dumpable).
//! Not covered: the pages the buffer shares with neighbouring allocations are marked with it
//! (and unlocked when the presigner goes), and a nonce's scalars pass once through the refilling
//! thread's stack on their way into the pool. Scalar arithmetic is k256's (constant time); the
//! point is libsecp256k1's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use alloy_primitives::{B256, Signature, U256};
use k256::elliptic_curve::PrimeField;
use k256::elliptic_curve::ops::Reduce;
use k256::elliptic_curve::scalar::IsHigh;
use k256::elliptic_curve::zeroize::Zeroize;
use k256::{FieldBytes, Scalar};
use sha2::{Digest, Sha256};

use crate::sig::SigningKey;

/// Nonces kept ready. At one request at a time a node signs a few thousand receipts a second,
/// and the thread refills from half: one wake per 128 signatures.
pub const POOL: usize = 256;

/// Numbers every nonce made in this process, whatever its key or pool.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// One nonce, ready to sign one digest: `k⁻¹`, `k⁻¹·r·d`, `R`'s x and y parity, and the
/// process it was made in.
struct Nonce {
    k_inv: Scalar,
    k_inv_r_d: Scalar,
    r: [u8; 32],
    odd: bool,
    pid: u32,
}

impl Drop for Nonce {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl Nonce {
    /// Overwrites the scalars (a spent nonce's and its signature give the key away).
    fn wipe(&mut self) {
        self.k_inv.zeroize();
        self.k_inv_r_d.zeroize();
    }

    /// Signs `hash` with the last nonce of `pool`, in its slot, and gives the slot up wiped;
    /// `None` when the pool is empty or the nonce cannot sign.
    fn spend_last(pool: &mut Vec<Nonce>, hash: &B256) -> Option<Signature> {
        let last = pool.last_mut()?;
        let sig = last.sign(hash);
        last.wipe();
        pool.pop();
        sig
    }

    /// A nonce from `seed` (hashed with the key and the next count); `None` for the few that
    /// make no nonce (zero or past the curve order, or `R`'s x past it: `v` could not say which
    /// point it was).
    fn make(d: &Scalar, seed: &[u8; 32]) -> Option<Self> {
        let mut d_bytes: [u8; 32] = d.to_bytes().into();
        let mut h = Sha256::new();
        h.update(b"cairn.presign.nonce.v1");
        h.update(d_bytes);
        h.update(seed);
        h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        d_bytes.zeroize();
        let mut k_bytes: [u8; 32] = h.finalize().into();
        let point = secp256k1::SecretKey::from_byte_array(k_bytes)
            .ok()
            .map(|mut k| {
                let point = k.public_key(crate::sig::ctx()).serialize();
                k.non_secure_erase();
                point
            });
        let k = Option::<Scalar>::from(Scalar::from_repr(FieldBytes::from(k_bytes)));
        k_bytes.zeroize();
        let (point, mut k) = (point?, k?);
        let r_bytes: [u8; 32] = point[1..]
            .try_into()
            .expect("a compressed point is 33 bytes");
        let r = Option::<Scalar>::from(Scalar::from_repr(FieldBytes::from(r_bytes)))?;
        let k_inv = Option::<Scalar>::from(k.invert());
        k.zeroize();
        let k_inv = k_inv?;
        if bool::from(r.is_zero()) {
            return None;
        }
        Some(Self {
            k_inv_r_d: k_inv * r * d,
            k_inv,
            r: r_bytes,
            odd: point[0] == 0x03,
            pid: std::process::id(),
        })
    }

    /// Signs `hash` (the caller then wipes the nonce); `None` when it cannot (`s` zero, or
    /// the nonce was made in another process: the pool was copied by a fork).
    fn sign(&self, hash: &B256) -> Option<Signature> {
        if self.pid != std::process::id() {
            return None;
        }
        let z = <Scalar as Reduce<k256::U256>>::reduce_bytes(&FieldBytes::from(hash.0));
        let mut s = self.k_inv * z + self.k_inv_r_d;
        if bool::from(s.is_zero()) {
            return None;
        }
        let mut odd = self.odd;
        // The low-s form: `(r, n − s)` signs the same digest with `R` negated, whose parity is
        // the other one.
        if bool::from(s.is_high()) {
            s = -s;
            odd = !odd;
        }
        Some(Signature::new(
            U256::from_be_bytes(self.r),
            U256::from_be_slice(&s.to_bytes()),
            odd,
        ))
    }
}

/// What the signers and the refilling thread share.
struct Shared {
    d: Scalar,
    /// Never grows past [`POOL`], its capacity: the buffer [`Pinned`] covers stays put.
    pool: Mutex<Vec<Nonce>>,
    pinned: Pinned,
    low: Condvar,
    closed: AtomicBool,
    /// Signatures made with a pool nonce, and with RFC 6979 instead.
    presigned: AtomicU64,
    fell_back: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.d.zeroize();
    }
}

impl Shared {
    fn pool(&self) -> MutexGuard<'_, Vec<Nonce>> {
        // A panic while the lock was held leaves at worst fewer nonces: still sound.
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fills the pool up to [`POOL`] from one seed (each nonce takes its own count); false
    /// when the owner went, or the OS gave no randomness (none made: the signers use RFC 6979
    /// meanwhile).
    fn fill(&self) -> bool {
        let Some(mut seed) = seed() else {
            return false;
        };
        while !self.closed.load(Ordering::Acquire) && self.pool().len() < POOL {
            if let Some(nonce) = Nonce::make(&self.d, &seed) {
                // Checked and pushed under one lock: the buffer never grows (it would move
                // out of the pinned pages).
                let mut pool = self.pool();
                if pool.len() < POOL {
                    pool.push(nonce);
                }
                debug_assert_eq!(pool.capacity(), POOL);
            }
            // The idle class alone does not keep a woken worker from waiting: measured on the
            // 2-core VM (Linux 6.18), a refill of 128 nonces (~2.7 ms) that the scheduler had
            // picked held its CPU while a worker woken there waited, and a node's p99 at one
            // connection was ~2 ms against a p50 of 150 µs. Giving the CPU up after each nonce
            // (~20 µs) bounds that wait; the call costs ~1 µs when no one waits.
            std::thread::yield_now();
        }
        seed.zeroize();
        !self.closed.load(Ordering::Acquire)
    }
}

/// A refill round's seed: 32 bytes from the OS, hashed with the process id and the wall and
/// monotonic clocks in nanoseconds (two processes given the same bytes still differ).
fn seed() -> Option<[u8; 32]> {
    let mut os = [0u8; 32];
    getrandom::fill(&mut os).ok()?;
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = Sha256::new();
    h.update(os);
    h.update(std::process::id().to_be_bytes());
    h.update(wall.to_be_bytes());
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes the timespec it is handed, which lives for the call.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        h.update(ts.tv_sec.to_be_bytes());
        h.update(ts.tv_nsec.to_be_bytes());
    }
    os.zeroize();
    Some(h.finalize().into())
}

/// Tells the refilling thread to stop when the last handle goes.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        // Without the lock (the refilling thread may hold it, descheduled): a wake it misses
        // is found within a second.
        self.0.closed.store(true, Ordering::Release);
        self.0.low.notify_all();
    }
}

/// A [`SigningKey`] whose signatures take their nonces from a pool made ahead of time (see the
/// module docs). Cloning shares the pool.
#[derive(Clone)]
pub struct Presigner {
    key: SigningKey,
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for Presigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presigner")
            .field("address", &self.key.address())
            .finish_non_exhaustive()
    }
}

impl Presigner {
    /// Starts the thread (`cairn-presign`, in the idle scheduling class) that keeps [`POOL`]
    /// nonces ready for `key`; it stops when the last clone is dropped.
    pub fn new(key: SigningKey) -> std::io::Result<Self> {
        let p = Self::idle(key);
        let for_thread = p.shared.clone();
        std::thread::Builder::new()
            .name("cairn-presign".into())
            .spawn(move || refill(&for_thread))?;
        Ok(p)
    }

    /// A presigner with an empty pool and no thread to fill it.
    fn idle(key: SigningKey) -> Self {
        let mut secret = key.secret_bytes();
        let d = Option::<Scalar>::from(Scalar::from_repr(FieldBytes::from(secret)))
            .expect("a signing key's secret is a valid scalar");
        secret.zeroize();
        let pool = Vec::with_capacity(POOL);
        let pinned = Pinned::new(&pool);
        let shared = Arc::new(Shared {
            d,
            pool: Mutex::new(pool),
            pinned,
            low: Condvar::new(),
            closed: AtomicBool::new(false),
            presigned: AtomicU64::new(0),
            fell_back: AtomicU64::new(0),
        });
        Self {
            key,
            _owner: Arc::new(Owner(shared.clone())),
            shared,
        }
    }

    /// Whether the nonces' memory is locked (kept out of swap); `mlock` is refused past
    /// `RLIMIT_MEMLOCK`.
    pub fn locked(&self) -> bool {
        self.shared.pinned.locked
    }

    /// The key this signs with.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Signs `hash`: low-s, `v` as parity, a nonce from the pool (an RFC 6979 one when the
    /// pool is empty or its lock taken).
    pub fn sign_prehash(&self, hash: &B256) -> Signature {
        // Never waits for the lock: the refilling thread runs in the idle class, and a signer
        // that waited for it to be scheduled again could wait milliseconds.
        let signed = match self.shared.pool.try_lock() {
            Ok(mut pool) => self.spend(&mut pool, hash),
            Err(std::sync::TryLockError::Poisoned(e)) => self.spend(&mut e.into_inner(), hash),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        let (count, sig) = match signed {
            Some(sig) => (&self.shared.presigned, sig),
            None => (&self.shared.fell_back, self.key.sign_prehash(hash)),
        };
        count.fetch_add(1, Ordering::Relaxed);
        sig
    }

    /// Signatures made so far: with a pool nonce, and with RFC 6979 (an empty pool, a taken
    /// lock: many of these say the machine leaves the thread no idle time).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.presigned.load(Ordering::Relaxed),
            self.shared.fell_back.load(Ordering::Relaxed),
        )
    }

    /// Signs with the pool's last nonce; wakes the refilling thread when the pool falls to half.
    fn spend(&self, pool: &mut Vec<Nonce>, hash: &B256) -> Option<Signature> {
        let sig = Nonce::spend_last(pool, hash);
        if pool.len() == POOL / 2 {
            self.shared.low.notify_one();
        }
        sig
    }

    /// Nonces ready now (waits for the pool's lock).
    #[cfg(test)]
    fn ready(&self) -> usize {
        self.shared.pool().len()
    }
}

/// The pages of a pool's buffer, kept out of swap and core dumps while it lives (best effort:
/// `mlock` may be refused past `RLIMIT_MEMLOCK`; the dump is the process's own setting too).
struct Pinned {
    start: usize,
    len: usize,
    /// `mlock` succeeded.
    locked: bool,
}

impl Pinned {
    fn new(buf: &Vec<Nonce>) -> Self {
        let bytes = buf.capacity() * std::mem::size_of::<Nonce>();
        #[cfg(target_os = "linux")]
        {
            // SAFETY: sysconf reads a constant.
            let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
                .unwrap_or(4096)
                .max(1);
            let at = buf.as_ptr() as usize;
            let start = at - at % page;
            let len = (at + bytes).next_multiple_of(page) - start;
            // SAFETY: the range covers whole pages of this process's own live allocation;
            // neither call reads or writes memory, they only set how the pages are kept.
            let locked = unsafe {
                libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTDUMP);
                libc::mlock(start as *const libc::c_void, len) == 0
            };
            Self { start, len, locked }
        }
        #[cfg(not(target_os = "linux"))]
        {
            Self {
                start: buf.as_ptr() as usize,
                len: bytes,
                locked: false,
            }
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if self.locked {
            // SAFETY: undoes `mlock` on the same range; touches no memory.
            unsafe { libc::munlock(self.start as *const libc::c_void, self.len) };
        }
    }
}

/// Fills the pool whenever it is at most half full, until the owner goes.
fn refill(shared: &Shared) {
    crate::run_only_when_idle();
    loop {
        {
            let mut pool = shared.pool();
            while pool.len() > POOL / 2 && !shared.closed.load(Ordering::Acquire) {
                pool = shared
                    .low
                    .wait_timeout(pool, Duration::from_secs(1))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        if !shared.fill() {
            if shared.closed.load(Ordering::Acquire) {
                return;
            }
            // The OS gave no randomness: the signers use RFC 6979 until it does.
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sig::recover_prehash;
    use std::collections::HashSet;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&B256::repeat_byte(0x42)).unwrap()
    }

    /// A presigner whose pool this thread filled (no thread of its own to wait for).
    fn filled() -> Presigner {
        let p = Presigner::idle(key());
        assert!(p.shared.fill());
        assert_eq!(p.ready(), POOL);
        p
    }

    #[test]
    fn presigned_signatures_recover_to_the_key_low_s_each_nonce_once() {
        let p = filled();
        let n = alloy_primitives::uint!(
            0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141_U256
        );
        // Digests at the edges: zero, the order itself and past it (reduced), all ones.
        let mut hashes = vec![
            B256::ZERO,
            B256::from(n),
            B256::from(n + U256::from(1)),
            B256::repeat_byte(0xff),
        ];
        hashes.extend((0u64..1500).map(|i| alloy_primitives::keccak256(i.to_be_bytes())));
        let mut rs = HashSet::new();
        let mut odd = [0usize; 2];
        for (i, h) in hashes.iter().enumerate() {
            if i % (POOL / 2) == 0 {
                assert!(p.shared.fill());
            }
            let sig = p.sign_prehash(h);
            // libsecp256k1 (which refuses high s) and alloy's k256 recovery agree.
            assert_eq!(recover_prehash(&sig, h), Ok(p.key().address()), "{h}");
            assert_eq!(
                sig.recover_address_from_prehash(h).unwrap(),
                p.key().address()
            );
            // Not the RFC 6979 signature: the pool's nonce signed it.
            assert_ne!(sig, p.key().sign_prehash(h));
            assert!(rs.insert(sig.r()), "a nonce was used twice");
            odd[usize::from(sig.v())] += 1;
        }
        // Both parities come out (a fixed v would recover the wrong key half the time).
        assert!(odd[0] > 500 && odd[1] > 500, "{odd:?}");
    }

    #[test]
    fn a_digest_signed_twice_gets_two_valid_signatures() {
        let p = filled();
        let h = B256::repeat_byte(7);
        let (a, b) = (p.sign_prehash(&h), p.sign_prehash(&h));
        assert_ne!(a, b);
        assert_eq!(recover_prehash(&a, &h), recover_prehash(&b, &h));
        assert_eq!(p.counts(), (2, 0));
    }

    #[test]
    fn an_empty_pool_or_a_nonce_from_another_process_signs_as_the_key_does() {
        let p = Presigner::idle(key());
        let h = B256::repeat_byte(9);
        assert_eq!(p.sign_prehash(&h), p.key().sign_prehash(&h));
        // A nonce a fork copied: its process is not this one.
        let mut copied = Nonce::make(&p.shared.d, &[1; 32]).unwrap();
        copied.pid = std::process::id().wrapping_add(1);
        p.shared.pool().push(copied);
        assert_eq!(p.sign_prehash(&h), p.key().sign_prehash(&h));
        assert_eq!(p.ready(), 0);
        assert_eq!(p.counts(), (0, 2));
        // Wiping a nonce (what a spent one gets in its slot) overwrites its scalars.
        let mut n = Nonce::make(&p.shared.d, &[2; 32]).unwrap();
        assert!(!bool::from(n.k_inv.is_zero()));
        n.wipe();
        assert!(bool::from(n.k_inv.is_zero()) && bool::from(n.k_inv_r_d.is_zero()));
    }

    /// The pool's pages are marked to be left out of core dumps (`dd`) and, where the OS
    /// allowed it, locked (`lo`, `Locked:`), as `/proc/self/smaps` shows them.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_pool_is_kept_out_of_core_dumps_and_swap() {
        let p = filled();
        let at = p.shared.pool().as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        let (mut flags, mut locked_kb) = (String::new(), None);
        for line in smaps.lines() {
            let head = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = head.split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = (a..b).contains(&at);
                continue;
            }
            if !inside {
                continue;
            }
            if let Some(v) = line.strip_prefix("VmFlags:") {
                flags = v.to_string();
            }
            if let Some(v) = line.strip_prefix("Locked:") {
                locked_kb = v.trim().trim_end_matches("kB").trim().parse::<u64>().ok();
            }
        }
        let flags: Vec<&str> = flags.split_whitespace().collect();
        assert!(flags.contains(&"dd"), "{flags:?}");
        assert_eq!(p.shared.pinned.start % 4096, 0);
        assert!(p.shared.pinned.len >= POOL * std::mem::size_of::<Nonce>());
        if p.shared.pinned.locked {
            assert!(flags.contains(&"lo"), "{flags:?}");
            assert!(locked_kb.is_some_and(|k| k > 0), "{locked_kb:?}");
        } else {
            eprintln!("mlock was refused here (RLIMIT_MEMLOCK): only the dump flag is checked");
        }
        // The buffer never moves: a full pool still sits where it was pinned.
        assert_eq!(p.shared.pool().capacity(), POOL);
    }

    #[test]
    fn the_thread_fills_the_pool_and_stops_with_the_last_handle() {
        let p = Presigner::new(key()).unwrap();
        let shared = Arc::downgrade(&p.shared);
        let twin = p.clone();
        drop(p);
        // An idle-class thread on a machine busy with other tests: generous waits.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while twin.ready() < POOL {
            assert!(
                std::time::Instant::now() < deadline,
                "the pool never filled"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(twin);
        while shared.upgrade().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the refilling thread outlived its presigner"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
