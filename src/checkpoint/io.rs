//! Files: atomic writing through a temporary file, the safetensors framing, and reading the
//! data region block by block.

use super::{format_err, BLOCK_BYTES, CHECKSUM_TENSOR, MAX_HEADER_BYTES};
use crate::dtype::DType;
use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use std::collections::HashMap;
#[cfg(not(target_arch = "wasm32"))]
use std::fs::{self, File, OpenOptions};
#[cfg(not(target_arch = "wasm32"))]
use std::io::BufWriter;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
#[cfg(not(target_arch = "wasm32"))]
use std::path::PathBuf;
#[cfg(not(target_arch = "wasm32"))]
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a checkpoint is read from: a file (native targets) or bytes in memory.
#[derive(Debug)]
pub(crate) enum Source {
    /// An open file.
    #[cfg(not(target_arch = "wasm32"))]
    File(File),
    /// A whole checkpoint in memory.
    Bytes(std::io::Cursor<Vec<u8>>),
}

impl Source {
    /// Its length in bytes.
    fn len(&self) -> std::io::Result<u64> {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Source::File(f) => Ok(f.metadata()?.len()),
            Source::Bytes(b) => Ok(b.get_ref().len() as u64),
        }
    }
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Source::File(f) => f.read(buf),
            Source::Bytes(b) => b.read(buf),
        }
    }
}

impl Seek for Source {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Source::File(f) => f.seek(pos),
            Source::Bytes(b) => b.seek(pos),
        }
    }
}

/// Removes a temporary file unless disarmed (also when the writer panics).
#[cfg(not(target_arch = "wasm32"))]
struct TempFile(Option<PathBuf>);

#[cfg(not(target_arch = "wasm32"))]
impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Write a file through `write` into a temporary file next to `path`, sync it, and rename it
/// over `path`. On any error (or panic) the temporary file is removed and `path` is untouched.
/// `write` may seek back to patch what it wrote (the header's checksums).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>, &Path) -> Result<()>,
) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let file_name = path.file_name().ok_or_else(|| Error::Io {
        op: "save to",
        path: path.display().to_string(),
        kind: std::io::ErrorKind::InvalidInput,
        message: "not a file path".into(),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| Error::io("create", &tmp, e))?;
    let mut guard = TempFile(Some(tmp.clone()));
    let mut w = BufWriter::with_capacity(1 << 20, file);
    write(&mut w, &tmp)?;
    let file = w
        .into_inner()
        .map_err(|e| Error::io("write", &tmp, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io("sync", &tmp, e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| Error::io("rename a checkpoint onto", path, e))?;
    guard.0 = None;
    // Make the rename itself durable where a directory can be synced (best effort).
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A safetensors file's framing, checked: its header and where every tensor's bytes are.
pub(crate) struct Framing {
    pub data_start: u64,
    pub data_len: u64,
    pub infos: HashMap<String, TensorInfo>,
    /// Tensor names in data order.
    pub order: Vec<String>,
    pub metadata: Option<HashMap<String, String>>,
    /// With a checksum tensor: whether the CRC-32 of the length and header bytes matched it.
    pub header_crc: Option<(u32, u32)>,
}

/// Read and check the framing of `file`: the header length, the header (JSON, offsets in
/// bounds, contiguous, not overlapping), the file's length; with a checksum tensor, its
/// position (last, 4 bytes, U8) and the header's CRC-32 (computed over the 8 length bytes and
/// the header, padding included).
pub(crate) fn read_framing(file: &mut Source, path: &Path) -> Result<Framing> {
    let file_len = file.len().map_err(|e| Error::io("stat", path, e))?;
    if file_len < 8 {
        return Err(format_err(format!(
            "the file has {file_len} bytes, fewer than a safetensors header length"
        )));
    }
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|e| Error::io("read", path, e))?;
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER_BYTES || n > file_len - 8 {
        return Err(format_err(format!(
            "header length {n} exceeds the file ({file_len} bytes) or the {MAX_HEADER_BYTES}-byte limit"
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(|e| Error::io("read", path, e))?;
    // A version 2 file ends with the CRC-32 of the length and the header: compare it before
    // parsing, so that damage to the header is reported as such (and not as whatever the
    // damaged JSON happens to say).
    let computed = {
        let mut h = crc32fast::Hasher::new();
        h.update(&len_bytes);
        h.update(&header);
        h.finalize()
    };
    let mut stored = [0u8; 4];
    if file_len >= 8 + n + 4 {
        file.seek(SeekFrom::Start(file_len - 4))
            .and_then(|_| file.read_exact(&mut stored))
            .map_err(|e| Error::io("read", path, e))?;
    }
    let stored = u32::from_le_bytes(stored);
    let sealed_look = header
        .windows(CHECKSUM_TENSOR.len())
        .any(|w| w == CHECKSUM_TENSOR.as_bytes());
    let damaged = |e: String| {
        if stored != computed && sealed_look {
            Error::CheckpointChecksum {
                what: "header".into(),
                expected: stored,
                got: computed,
            }
        } else {
            format_err(e)
        }
    };
    let meta: Metadata = serde_json::from_slice(&header)
        .map_err(|e| damaged(format!("bad safetensors header: {e}")))?;
    let data_len = meta.data_len() as u64;
    let order = meta.offset_keys();
    let infos: HashMap<String, TensorInfo> = order
        .iter()
        .filter_map(|k| meta.info(k).map(|i| (k.clone(), i.clone())))
        .collect();
    let header_crc = match infos.get(CHECKSUM_TENSOR) {
        None => None,
        Some(info) => {
            if stored != computed && 8 + n + data_len == file_len {
                return Err(damaged(String::new()));
            }
            if info.dtype != Dtype::U8
                || info.shape != [4]
                || info.data_offsets.1 as u64 != data_len
            {
                return Err(format_err(format!(
                    "`{CHECKSUM_TENSOR}` is not the last tensor, of 4 bytes (U8)"
                )));
            }
            Some((stored, computed))
        }
    };
    if 8 + n + data_len != file_len {
        // Trailing bytes after an intact sealed file are a framing problem; a header whose
        // offsets were damaged is a checksum problem.
        let end = 8 + n + data_len;
        if sealed_look && end < file_len && end >= 8 + n + 4 {
            let mut at_end = [0u8; 4];
            file.seek(SeekFrom::Start(end - 4))
                .and_then(|_| file.read_exact(&mut at_end))
                .map_err(|e| Error::io("read", path, e))?;
            if u32::from_le_bytes(at_end) != computed {
                return Err(damaged(String::new()));
            }
        }
        return Err(format_err(format!(
            "the header describes {data_len} bytes of data, the file holds {} (truncated or padded?)",
            file_len - 8 - n
        )));
    }
    Ok(Framing {
        data_start: 8 + n,
        data_len,
        infos,
        order,
        metadata: meta.metadata().clone(),
        header_crc,
    })
}

/// Read bytes `range` of the data region in blocks of at most [`BLOCK_BYTES`] (fewer when the
/// range is shorter), calling `f(block, offset of the block in the data region)`.
pub(crate) fn read_blocks(
    file: &mut Source,
    path: &Path,
    data_start: u64,
    range: (usize, usize),
    mut f: impl FnMut(&[u8], usize) -> Result<()>,
) -> Result<()> {
    let (start, end) = range;
    file.seek(SeekFrom::Start(data_start + start as u64))
        .map_err(|e| Error::io("seek in", path, e))?;
    let mut block = vec![0u8; (end - start).min(BLOCK_BYTES)];
    let mut at = start;
    while at < end {
        let n = (end - at).min(BLOCK_BYTES);
        file.read_exact(&mut block[..n])
            .map_err(|e| Error::io("read", path, e))?;
        f(&block[..n], at)?;
        at += n;
    }
    Ok(())
}

/// Walks tensors (sorted, contiguous byte ranges of the data region) along blocks: for a block
/// at `offset`, the parts of tensors in it.
pub(crate) struct Segments<'a> {
    ranges: &'a [(usize, usize)],
    next: usize,
}

impl<'a> Segments<'a> {
    pub fn new(ranges: &'a [(usize, usize)]) -> Self {
        Segments { ranges, next: 0 }
    }

    /// Call `f(tensor index, bytes of that tensor in the block, offset of those bytes in the
    /// tensor, whether they end the tensor)` for every tensor part in `block`, in order.
    pub fn each(
        &mut self,
        block: &[u8],
        offset: usize,
        mut f: impl FnMut(usize, &[u8], usize, bool) -> Result<()>,
    ) -> Result<()> {
        let end = offset + block.len();
        while self.next < self.ranges.len() {
            let (s, e) = self.ranges[self.next];
            let lo = s.max(offset);
            let hi = e.min(end);
            if lo >= end {
                break;
            }
            f(self.next, &block[lo - offset..hi - offset], lo - s, hi == e)?;
            if hi == e {
                self.next += 1;
            } else {
                break;
            }
        }
        Ok(())
    }
}

/// Little-endian bytes of `dtype` values (whole elements), widened to f32.
pub(crate) fn widened(dtype: DType, bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    let es = dtype.size();
    bytes.chunks_exact(es).map(move |c| match dtype {
        DType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
        DType::Bf16 => crate::dtype::bf16_to_f32(u16::from_le_bytes([c[0], c[1]])),
        DType::F16 => crate::dtype::f16_to_f32(u16::from_le_bytes([c[0], c[1]])),
    })
}

/// Re-cuts the parts of one tensor after another (as [`Segments::each`] hands them out, split
/// wherever a block ends) into parts that start at a multiple of 4 bytes of their tensor and
/// hold whole words, but for a tensor's last part, which may end in a half word: GPU copies
/// need 4-byte aligned offsets and sizes, and a block may end inside a word when a 16-bit
/// tensor of odd length shifted what follows it by 2 bytes. Holds back at most 3 bytes.
#[derive(Default)]
pub(crate) struct Realign {
    carry: [u8; 4],
    held: usize,
}

impl Realign {
    /// Hand `bytes` (at byte `at` of their tensor, `ends`: the tensor's last part) on to `f` as
    /// aligned parts `(bytes, at, ends)`, in order, together exactly the bytes given.
    pub fn each(
        &mut self,
        mut bytes: &[u8],
        mut at: usize,
        ends: bool,
        mut f: impl FnMut(&[u8], usize, bool) -> Result<()>,
    ) -> Result<()> {
        if self.held > 0 {
            // Complete the held word first.
            let take = (4 - self.held).min(bytes.len());
            self.carry[self.held..self.held + take].copy_from_slice(&bytes[..take]);
            let n = self.held + take;
            bytes = &bytes[take..];
            let word_at = at - self.held;
            at += take;
            self.held = 0;
            if n < 4 && !ends {
                self.held = n;
                return Ok(());
            }
            let word = self.carry;
            f(&word[..n], word_at, ends && bytes.is_empty())?;
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let whole = if ends {
            bytes.len()
        } else {
            bytes.len() / 4 * 4
        };
        if whole > 0 {
            f(&bytes[..whole], at, ends)?;
        }
        let rest = &bytes[whole..];
        self.carry[..rest.len()].copy_from_slice(rest);
        self.held = rest.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_dir(test: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wgpu-optim-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn atomic_write_replaces_or_leaves_untouched() {
        let dir = temp_dir("atomic");
        let path = dir.join("ck.safetensors");
        write_atomic(&path, |w, _| {
            w.write_all(b"first").unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        // A failing writer: the old file stays and no temporary file is left behind.
        let err = write_atomic(&path, |w, _| {
            w.write_all(b"half of the sec").unwrap();
            Err(format_err("simulated failure"))
        })
        .unwrap_err();
        assert!(matches!(err, Error::CheckpointFormat(_)));
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(entries(&dir), vec!["ck.safetensors"]);
        // A panicking writer: the same.
        let r = std::panic::catch_unwind(|| {
            let _ = write_atomic(&path, |w, _| {
                w.write_all(b"partial").unwrap();
                panic!("simulated crash")
            });
        });
        assert!(r.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(entries(&dir), vec!["ck.safetensors"]);
        write_atomic(&path, |w, _| {
            w.write_all(b"second").unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(entries(&dir), vec!["ck.safetensors"]);
        // A missing directory is an I/O error naming the file.
        let err = write_atomic(&dir.join("no/such/dir/ck"), |_, _| Ok(())).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Io {
                    kind: std::io::ErrorKind::NotFound,
                    ..
                }
            ),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn realign_cuts_parts_at_words() {
        // A tensor of 14 bytes handed out as 6 + 5 + 3 bytes: aligned parts of whole words,
        // the last one ending in a half word, the same bytes in the same order.
        let data: Vec<u8> = (0..14).collect();
        let mut r = Realign::default();
        let mut got: Vec<(Vec<u8>, usize, bool)> = Vec::new();
        for (bytes, at, ends) in [
            (&data[..6], 0, false),
            (&data[6..11], 6, false),
            (&data[11..], 11, true),
        ] {
            r.each(bytes, at, ends, |b, at, ends| {
                assert_eq!(at % 4, 0);
                assert!(ends || b.len() % 4 == 0);
                got.push((b.to_vec(), at, ends));
                Ok(())
            })
            .unwrap();
        }
        let joined: Vec<u8> = got.iter().flat_map(|g| g.0.clone()).collect();
        assert_eq!(joined, data);
        assert_eq!(got.last().map(|g| (g.1, g.2)), Some((12, true)));
        assert!(got[..got.len() - 1].iter().all(|g| !g.2));
        // Parts shorter than a word, and a tensor of 2 bytes.
        let mut r = Realign::default();
        let mut got = Vec::new();
        for (bytes, at, ends) in [
            (&data[..1], 0, false),
            (&data[1..3], 1, false),
            (&data[3..6], 3, true),
        ] {
            r.each(bytes, at, ends, |b, at, ends| {
                got.push((b.to_vec(), at, ends));
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(
            got,
            vec![(vec![0, 1, 2, 3], 0, false), (vec![4, 5], 4, true)]
        );
        let mut r = Realign::default();
        let mut got = Vec::new();
        r.each(&data[..2], 0, true, |b, at, ends| {
            got.push((b.to_vec(), at, ends));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec![(vec![0, 1], 0, true)]);
    }

    #[test]
    fn segments_split_tensors_along_blocks() {
        let ranges = [(0, 4), (4, 12), (12, 16)];
        let mut seg = Segments::new(&ranges);
        let data: Vec<u8> = (0..16).collect();
        let mut got = Vec::new();
        for (i, block) in data.chunks(6).enumerate() {
            seg.each(block, i * 6, |t, b, at, last| {
                got.push((t, b.to_vec(), at, last));
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(
            got,
            vec![
                (0, vec![0, 1, 2, 3], 0, true),
                (1, vec![4, 5], 0, false),
                (1, vec![6, 7, 8, 9, 10, 11], 2, true),
                (2, vec![12, 13, 14, 15], 0, true),
            ]
        );
    }
}
