//! Chunkings and small parameters drawn from the input itself.
//!
//! A streaming reader must give the same result however its input is cut. The fuzzer hands
//! over one byte string; the cuts come from a hash of it, so they are reproducible from the
//! input alone, and every mutation moves them.

/// A small deterministic generator seeded from the input (FNV-1a, then SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `data`; `salt` gives each use of the same input its own sequence.
    pub fn new(data: &[u8], salt: u64) -> Rng {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in data {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Rng(h ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// `data` as one chunk.
pub fn whole(data: &[u8]) -> Vec<&[u8]> {
    vec![data]
}

/// `data` one byte at a time.
pub fn bytewise(data: &[u8]) -> Vec<&[u8]> {
    data.chunks(1).collect()
}

/// `data` cut at up to eight positions drawn from `rng`, empty chunks included (two cuts at
/// one place, or one at either end).
pub fn cuts<'a>(data: &'a [u8], rng: &mut Rng) -> Vec<&'a [u8]> {
    let n = rng.below(9);
    let mut at: Vec<usize> = (0..n).map(|_| rng.below(data.len() + 1)).collect();
    at.sort_unstable();
    let mut chunks = Vec::with_capacity(n + 1);
    let mut last = 0;
    for &c in &at {
        chunks.push(data.get(last..c).unwrap_or_default());
        last = c;
    }
    chunks.push(data.get(last..).unwrap_or_default());
    chunks
}

/// `data` in pieces of 1 to 32 bytes, sizes drawn from `rng`.
pub fn pieces<'a>(data: &'a [u8], rng: &mut Rng) -> Vec<&'a [u8]> {
    let mut chunks = Vec::with_capacity(data.len() / 16 + 1);
    let mut rest = data;
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at((1 + rng.below(32)).min(rest.len()));
        chunks.push(piece);
        rest = tail;
    }
    chunks
}

/// Inputs up to this long are also fed byte by byte; longer ones in small pieces (feeding
/// thousands of single bytes would slow the campaign more than it finds).
pub const BYTEWISE_MAX: usize = 1024;

/// The chunkings every streaming check compares with the whole input: byte by byte (small
/// pieces past [`BYTEWISE_MAX`]), and cuts drawn from the input.
pub fn chunkings(data: &[u8]) -> [(&'static str, Vec<&[u8]>); 2] {
    let mut rng = Rng::new(data, 0);
    let fine = if data.len() <= BYTEWISE_MAX {
        ("byte by byte", bytewise(data))
    } else {
        ("in small pieces", pieces(data, &mut rng))
    };
    [fine, ("cut", cuts(data, &mut rng))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_cover_the_input_in_order() {
        let data: Vec<u8> = (0..=255).collect();
        for salt in 0..200 {
            let chunks = cuts(&data, &mut Rng::new(&data, salt));
            assert!(chunks.len() <= 9);
            assert_eq!(chunks.concat(), data);
        }
        assert_eq!(cuts(&[], &mut Rng::new(&[], 1)).concat(), Vec::<u8>::new());
        assert_eq!(bytewise(b"abc"), vec![b"a", b"b", b"c"]);
        let long = vec![7u8; 5000];
        let p = pieces(&long, &mut Rng::new(&long, 0));
        assert!(p.iter().all(|c| (1..=32).contains(&c.len())));
        assert_eq!(p.concat(), long);
    }
}
