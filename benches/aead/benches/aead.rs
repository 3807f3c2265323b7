//! ChaCha20-Poly1305 as the frame AEAD uses it (proto/src/frame.rs), single-threaded, in three
//! implementations: `seal` encrypts the payload in place and returns the tag separately (written after
//! the payload); `open` authenticates and decrypts payload + tag in place. The associated data is the
//! 36-byte sealed header, the nonce the frame's sequence number (little-endian, 8 of 12 bytes).
//!
//! Sizes are the payloads frames carry: 256 (a small metadata or heartbeat frame), 1408 (the shard of
//! MTU 1500: `shard_size_for_mtu(1500)`) and 8896 (MTU 9000: 9000 - 28 - 36 - 16 = 8920, rounded down to
//! a multiple of 64). The fourth line, `openssl-crate`, is the system's OpenSSL through the `openssl`
//! crate, for reference (the suite uses no OpenSSL; deny.toml bans it), and `openssl-evp` the same library
//! called directly through `openssl-sys`. Throughput counts payload bytes. Every implementation must produce the same bytes:
//! checked before anything is timed.
//!
//! The clock is the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not the wall clock: this machine is
//! shared with other builds, and CPU time is what a frame costs the core that seals or opens it (and
//! what `openssl speed` counts by default, so the reference line is comparable).

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

const HEADER: usize = 36;
const TAG: usize = 16;
const SIZES: [usize; 3] = [256, 1408, 8896];
const KEY: [u8; 32] = [0x42; 32];

fn nonce12(seq: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&seq.to_le_bytes());
    n
}

fn header(seq: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&[0xD1, 0x0D, 3, 2]);
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    h
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "CLOCK_THREAD_CPUTIME_ID");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Criterion's measurement in thread CPU nanoseconds.
struct ThreadCpu;
impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns() - start
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuNs
    }
}

struct CpuNs;
impl ValueFormatter for CpuNs {
    fn scale_values(&self, _typical: f64, _values: &mut [f64]) -> &'static str {
        "ns cpu"
    }
    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let bytes = match *t {
            Throughput::Bytes(b) | Throughput::BytesDecimal(b) | Throughput::Elements(b) => {
                b as f64
            }
        };
        for v in values {
            *v = bytes * 1e3 / *v;
        }
        "MB/s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

/// One implementation behind the frame's two operations.
trait FrameAead {
    const NAME: &'static str;
    fn new(key: &[u8; 32]) -> Self;
    /// `payload` in place; the tag is returned.
    fn seal(&self, seq: u64, aad: &[u8], payload: &mut [u8]) -> [u8; TAG];
    /// `ct_tag` is ciphertext followed by the tag; decrypted in place.
    fn open(&self, seq: u64, aad: &[u8], ct_tag: &mut [u8]) -> bool;
}

struct Ring(ring::aead::LessSafeKey);
impl FrameAead for Ring {
    const NAME: &'static str = "ring";
    fn new(key: &[u8; 32]) -> Self {
        use ring::aead::*;
        Ring(LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, key).unwrap(),
        ))
    }
    fn seal(&self, seq: u64, aad: &[u8], payload: &mut [u8]) -> [u8; TAG] {
        use ring::aead::*;
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce12(seq)),
                Aad::from(aad),
                payload,
            )
            .unwrap();
        tag.as_ref().try_into().unwrap()
    }
    fn open(&self, seq: u64, aad: &[u8], ct_tag: &mut [u8]) -> bool {
        use ring::aead::*;
        self.0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce12(seq)),
                Aad::from(aad),
                ct_tag,
            )
            .is_ok()
    }
}

struct AwsLc(aws_lc_rs::aead::LessSafeKey);
impl FrameAead for AwsLc {
    const NAME: &'static str = "aws-lc-rs";
    fn new(key: &[u8; 32]) -> Self {
        use aws_lc_rs::aead::*;
        AwsLc(LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, key).unwrap(),
        ))
    }
    fn seal(&self, seq: u64, aad: &[u8], payload: &mut [u8]) -> [u8; TAG] {
        use aws_lc_rs::aead::*;
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce12(seq)),
                Aad::from(aad),
                payload,
            )
            .unwrap();
        tag.as_ref().try_into().unwrap()
    }
    fn open(&self, seq: u64, aad: &[u8], ct_tag: &mut [u8]) -> bool {
        use aws_lc_rs::aead::*;
        self.0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce12(seq)),
                Aad::from(aad),
                ct_tag,
            )
            .is_ok()
    }
}

struct RustCrypto(chacha20poly1305::ChaCha20Poly1305);
impl FrameAead for RustCrypto {
    const NAME: &'static str = "rustcrypto";
    fn new(key: &[u8; 32]) -> Self {
        use chacha20poly1305::KeyInit;
        RustCrypto(chacha20poly1305::ChaCha20Poly1305::new(key.into()))
    }
    fn seal(&self, seq: u64, aad: &[u8], payload: &mut [u8]) -> [u8; TAG] {
        use chacha20poly1305::aead::AeadInPlace;
        self.0
            .encrypt_in_place_detached(&nonce12(seq).into(), aad, payload)
            .unwrap()
            .into()
    }
    fn open(&self, seq: u64, aad: &[u8], ct_tag: &mut [u8]) -> bool {
        use chacha20poly1305::aead::AeadInPlace;
        let (ct, tag) = ct_tag.split_at_mut(ct_tag.len() - TAG);
        let tag = chacha20poly1305::Tag::clone_from_slice(tag);
        self.0
            .decrypt_in_place_detached(&nonce12(seq).into(), aad, ct, &tag)
            .is_ok()
    }
}

/// The system's OpenSSL through its EVP interface: the key set once, then per frame a nonce, the
/// associated data, the payload in place and the tag (what `openssl speed -aead` times).
struct OpenSsl(
    std::cell::RefCell<openssl::cipher_ctx::CipherCtx>,
    std::cell::RefCell<openssl::cipher_ctx::CipherCtx>,
);
impl FrameAead for OpenSsl {
    const NAME: &'static str = "openssl-crate";
    fn new(key: &[u8; 32]) -> Self {
        use openssl::cipher::Cipher;
        use openssl::cipher_ctx::CipherCtx;
        let mut e = CipherCtx::new().unwrap();
        e.encrypt_init(Some(Cipher::chacha20_poly1305()), Some(key), None)
            .unwrap();
        let mut d = CipherCtx::new().unwrap();
        d.decrypt_init(Some(Cipher::chacha20_poly1305()), Some(key), None)
            .unwrap();
        OpenSsl(e.into(), d.into())
    }
    fn seal(&self, seq: u64, aad: &[u8], payload: &mut [u8]) -> [u8; TAG] {
        let mut c = self.0.borrow_mut();
        c.encrypt_init(None, None, Some(&nonce12(seq))).unwrap();
        c.cipher_update(aad, None).unwrap();
        let n = payload.len();
        c.cipher_update_inplace(payload, n).unwrap();
        c.cipher_final(&mut []).unwrap();
        let mut tag = [0u8; TAG];
        c.tag(&mut tag).unwrap();
        tag
    }
    fn open(&self, seq: u64, aad: &[u8], ct_tag: &mut [u8]) -> bool {
        let mut c = self.1.borrow_mut();
        let (ct, tag) = ct_tag.split_at_mut(ct_tag.len() - TAG);
        c.decrypt_init(None, None, Some(&nonce12(seq))).unwrap();
        c.set_tag(tag).unwrap();
        c.cipher_update(aad, None).unwrap();
        let n = ct.len();
        c.cipher_update_inplace(ct, n).unwrap();
        c.cipher_final(&mut []).is_ok()
    }
}

/// The same OpenSSL called directly (`openssl-sys`), without the `openssl` crate's checks around each
/// call: the per-frame sequence `openssl speed -aead` runs. Unsafe FFI, here only to see where the
/// crate's time goes.
struct OpenSslEvp(
    *mut openssl_sys::EVP_CIPHER_CTX,
    *mut openssl_sys::EVP_CIPHER_CTX,
);
impl FrameAead for OpenSslEvp {
    const NAME: &'static str = "openssl-evp";
    fn new(key: &[u8; 32]) -> Self {
        use openssl_sys::*;
        openssl_sys::init();
        // SAFETY: fresh contexts, a 32-byte key for a cipher that takes 32 bytes
        unsafe {
            let e = EVP_CIPHER_CTX_new();
            let d = EVP_CIPHER_CTX_new();
            assert!(!e.is_null() && !d.is_null());
            let c = EVP_chacha20_poly1305();
            assert_eq!(
                EVP_EncryptInit_ex(e, c, std::ptr::null_mut(), key.as_ptr(), std::ptr::null()),
                1
            );
            assert_eq!(
                EVP_DecryptInit_ex(d, c, std::ptr::null_mut(), key.as_ptr(), std::ptr::null()),
                1
            );
            OpenSslEvp(e, d)
        }
    }
    fn seal(&self, seq: u64, aad: &[u8], payload: &mut [u8]) -> [u8; TAG] {
        use openssl_sys::*;
        let n = nonce12(seq);
        let mut tag = [0u8; TAG];
        let mut outl = 0;
        let mut fin = [0u8; 16];
        // SAFETY: an initialised context; every pointer and length names a live buffer
        unsafe {
            let c = self.0;
            assert_eq!(
                EVP_EncryptInit_ex(
                    c,
                    std::ptr::null(),
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    n.as_ptr()
                ),
                1
            );
            assert_eq!(
                EVP_EncryptUpdate(
                    c,
                    std::ptr::null_mut(),
                    &mut outl,
                    aad.as_ptr(),
                    aad.len() as i32
                ),
                1
            );
            let p = payload.as_mut_ptr();
            assert_eq!(
                EVP_EncryptUpdate(c, p, &mut outl, p, payload.len() as i32),
                1
            );
            assert_eq!(EVP_EncryptFinal_ex(c, fin.as_mut_ptr(), &mut outl), 1);
            assert_eq!(
                EVP_CIPHER_CTX_ctrl(
                    c,
                    EVP_CTRL_GCM_GET_TAG, // = EVP_CTRL_AEAD_GET_TAG
                    TAG as i32,
                    tag.as_mut_ptr().cast()
                ),
                1
            );
        }
        tag
    }
    fn open(&self, seq: u64, aad: &[u8], ct_tag: &mut [u8]) -> bool {
        use openssl_sys::*;
        let n = nonce12(seq);
        let (ct, tag) = ct_tag.split_at_mut(ct_tag.len() - TAG);
        let mut outl = 0;
        let mut fin = [0u8; 16];
        // SAFETY: as in seal
        unsafe {
            let c = self.1;
            assert_eq!(
                EVP_DecryptInit_ex(
                    c,
                    std::ptr::null(),
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    n.as_ptr()
                ),
                1
            );
            assert_eq!(
                EVP_CIPHER_CTX_ctrl(
                    c,
                    EVP_CTRL_GCM_SET_TAG, // = EVP_CTRL_AEAD_SET_TAG
                    TAG as i32,
                    tag.as_mut_ptr().cast()
                ),
                1
            );
            assert_eq!(
                EVP_DecryptUpdate(
                    c,
                    std::ptr::null_mut(),
                    &mut outl,
                    aad.as_ptr(),
                    aad.len() as i32
                ),
                1
            );
            let p = ct.as_mut_ptr();
            assert_eq!(EVP_DecryptUpdate(c, p, &mut outl, p, ct.len() as i32), 1);
            EVP_DecryptFinal_ex(c, fin.as_mut_ptr(), &mut outl) == 1
        }
    }
}

/// A sealed frame body (ciphertext + tag) of `len` payload bytes under sequence number `seq`.
fn sealed<A: FrameAead>(a: &A, seq: u64, len: usize) -> Vec<u8> {
    let mut body: Vec<u8> = (0..len + TAG).map(|i| (i * 31 + 7) as u8).collect();
    let (p, t) = body.split_at_mut(len);
    let tag = a.seal(seq, &header(seq), p);
    t.copy_from_slice(&tag);
    body
}

/// The three produce the same bytes and open each other's frames (what frame.rs's tests and the
/// known-answer vectors check for the shipped one).
fn same_bytes() {
    let (r, w, c) = (Ring::new(&KEY), AwsLc::new(&KEY), RustCrypto::new(&KEY));
    let o = OpenSsl::new(&KEY);
    let x = OpenSslEvp::new(&KEY);
    for len in [0, 1, 63, 64, 65, 256, 1408, 8896] {
        let a = sealed(&r, 9, len);
        assert_eq!(a, sealed(&w, 9, len), "aws-lc-rs differs at {len}");
        assert_eq!(a, sealed(&c, 9, len), "rustcrypto differs at {len}");
        assert_eq!(a, sealed(&o, 9, len), "openssl differs at {len}");
        assert!(o.open(9, &header(9), &mut a.clone()));
        assert_eq!(a, sealed(&x, 9, len), "openssl-evp differs at {len}");
        assert!(x.open(9, &header(9), &mut a.clone()));
        assert!(r.open(9, &header(9), &mut a.clone()));
        assert!(w.open(9, &header(9), &mut a.clone()));
        assert!(c.open(9, &header(9), &mut a.clone()));
        let mut bad = a.clone();
        bad[0] ^= 1;
        assert!(!w.open(9, &header(9), &mut bad.clone()));
        assert!(!r.open(9, &header(9), &mut bad.clone()));
        assert!(!o.open(9, &header(9), &mut bad.clone()));
        assert!(!x.open(9, &header(9), &mut bad.clone()));
        assert!(!c.open(9, &header(9), &mut bad));
    }
}

fn bench_one<A: FrameAead>(c: &mut Criterion<ThreadCpu>) {
    let a = A::new(&KEY);
    for len in SIZES {
        let mut g = c.benchmark_group(format!("{}/{}", A::NAME, len));
        g.throughput(Throughput::Bytes(len as u64));
        // seal: the same buffer sealed over and over, a fresh sequence number (nonce) each time
        let mut buf = vec![0xABu8; len];
        let mut seq = 0u64;
        g.bench_function(BenchmarkId::from_parameter("seal"), |b| {
            b.iter(|| {
                seq += 1;
                let h = header(seq);
                black_box(a.seal(seq, &h, black_box(&mut buf)))
            })
        });
        // open: a fresh copy of one sealed frame each time (the copy is outside the timing)
        let frame = sealed(&a, 5, len);
        let h = header(5);
        g.bench_function(BenchmarkId::from_parameter("open"), |b| {
            b.iter_batched_ref(
                || frame.clone(),
                |f| assert!(a.open(5, &h, black_box(f))),
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
}

fn benches(c: &mut Criterion<ThreadCpu>) {
    same_bytes();
    bench_one::<Ring>(c);
    bench_one::<AwsLc>(c);
    bench_one::<RustCrypto>(c);
    bench_one::<OpenSsl>(c);
    bench_one::<OpenSslEvp>(c);
}

criterion_group! {
    name = aead;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = benches
}
criterion_main!(aead);
