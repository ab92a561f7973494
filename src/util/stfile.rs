//! safetensors files written and read tensor by tensor, so a file never needs a second copy of
//! its tensors in memory: the writer lays out the header exactly as `safetensors::serialize`
//! does (byte-identical files) and writes each tensor at its offset as it becomes available, in
//! any order; the reader reads one tensor at a time with positioned reads (no mapping, whose
//! touched pages would count as the process's memory).

use super::fs::parent_dir;
use super::interrupt;
use crate::error::{Kind, Tag};
use crate::fail;
use anyhow::{Context, Result};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Name, dtype and shape of one tensor of a file to write.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl Spec {
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>) -> Self {
        Self {
            name: name.into(),
            dtype,
            shape,
        }
    }

    fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

/// A safetensors file being written under a temporary name beside its destination.
pub struct Writer {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
    /// name → (absolute byte offset, byte length, written)
    slots: HashMap<String, (u64, usize, bool)>,
    /// Refuse to complete once a signal arrived (false for checkpoints written on the way out).
    check: bool,
    finished: bool,
    _guard: interrupt::TempGuard,
}

impl Drop for Writer {
    /// A writer dropped unfinished (an error elsewhere) leaves nothing behind.
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Each tensor's name, data offset and byte length.
type Layout = Vec<(String, usize, usize)>;

/// The header `safetensors::serialize` would write for these tensors (sorted by descending
/// dtype alignment, then name), padded to 8 bytes, and each tensor's data offset.
fn header(specs: &[Spec], metadata: Option<HashMap<String, String>>) -> Result<(Vec<u8>, Layout)> {
    let mut sorted: Vec<&Spec> = specs.iter().collect();
    sorted.sort_by(|a, b| b.dtype.cmp(&a.dtype).then(a.name.cmp(&b.name)));
    let mut offset = 0;
    let mut infos = Vec::with_capacity(sorted.len());
    let mut layout = Vec::with_capacity(sorted.len());
    for s in sorted {
        let n = s.bytes();
        let info = TensorInfo {
            dtype: s.dtype,
            shape: s.shape.clone(),
            data_offsets: (offset, offset + n),
        };
        infos.push((s.name.clone(), info));
        layout.push((s.name.clone(), offset, n));
        offset += n;
    }
    let meta = Metadata::new(metadata, infos)?;
    let mut buf = serde_json::to_string(&meta)?.into_bytes();
    buf.resize(buf.len().next_multiple_of(8), b' ');
    Ok((buf, layout))
}

impl Writer {
    /// Create the temporary file with its header; every tensor of `specs` must then be written
    /// once before [`Writer::finish`].
    pub fn create(
        path: &Path,
        specs: &[Spec],
        metadata: Option<HashMap<String, String>>,
        check: bool,
    ) -> Result<Self> {
        let (head, layout) = header(specs, metadata)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let tmp = parent_dir(path).join(format!(".{name}.sparc3-{}.tmp", std::process::id()));
        let guard = interrupt::TempGuard::new(&tmp);
        let file = File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))
            .tag(Kind::Output)?;
        let start = 8 + head.len() as u64;
        let total = start + layout.iter().map(|l| l.2 as u64).sum::<u64>();
        let w = Self {
            file,
            tmp,
            path: path.to_path_buf(),
            slots: layout
                .into_iter()
                .map(|(n, o, len)| (n, (start + o as u64, len, false)))
                .collect(),
            check,
            finished: false,
            _guard: guard,
        };
        let res = (|| -> Result<()> {
            w.file.set_len(total)?;
            w.file.write_all_at(&(head.len() as u64).to_le_bytes(), 0)?;
            w.file.write_all_at(&head, 8)?;
            Ok(())
        })();
        w.fail_on(res)?;
        Ok(w)
    }

    /// Remove the temporary file when `res` is an error.
    fn fail_on<T>(&self, res: Result<T>) -> Result<T> {
        if res.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        res.with_context(|| format!("writing {}", self.tmp.display()))
            .tag(Kind::Output)
    }

    fn slot(&mut self, name: &str, len: usize) -> Result<u64> {
        let Some(slot) = self.slots.get_mut(name) else {
            anyhow::bail!("tensor '{name}' is not in the file's layout");
        };
        if slot.1 != len || slot.2 {
            anyhow::bail!("tensor '{name}': {len} bytes written twice or against its shape");
        }
        slot.2 = true;
        Ok(slot.0)
    }

    /// Write one tensor's raw little-endian bytes.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let res = self
            .slot(name, bytes.len())
            .and_then(|at| Ok(self.file.write_all_at(bytes, at)?));
        self.fail_on(res)
    }

    /// Write an f32 tensor, each value multiplied by `scale` (in chunks: no full-size copy).
    pub fn write_f32(&mut self, name: &str, v: &[f32], scale: Option<f32>) -> Result<()> {
        const CHUNK: usize = 1 << 16;
        let res = self.slot(name, v.len() * 4).and_then(|at| {
            let mut buf = Vec::with_capacity(CHUNK * 4);
            for (i, c) in v.chunks(CHUNK).enumerate() {
                buf.clear();
                match scale {
                    Some(s) => buf.extend(c.iter().flat_map(|x| (x * s).to_le_bytes())),
                    None => buf.extend(c.iter().flat_map(|x| x.to_le_bytes())),
                }
                self.file.write_all_at(&buf, at + (i * CHUNK * 4) as u64)?;
            }
            Ok(())
        });
        self.fail_on(res)
    }

    /// Sync and rename into place once every tensor is written.
    pub fn finish(mut self) -> Result<()> {
        let res = (|| -> Result<()> {
            if let Some((name, _)) = self.slots.iter().find(|(_, s)| !s.2) {
                anyhow::bail!("tensor '{name}' was never written");
            }
            self.file.sync_all()?;
            if self.check {
                interrupt::check()?;
            }
            std::fs::rename(&self.tmp, &self.path)
                .with_context(|| format!("renaming into {}", self.path.display()))?;
            if let Ok(d) = File::open(parent_dir(&self.path)) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        self.finished = res.is_ok();
        self.fail_on(res)
    }
}

/// A safetensors file opened for reading tensor by tensor.
pub struct Reader {
    file: File,
    path: PathBuf,
    data_start: u64,
    meta: Metadata,
}

impl Reader {
    /// Open and parse the header (refusing a header or data that does not fit the file).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let size = file.metadata()?.len();
        let mut n = [0u8; 8];
        if size < 8 || file.read_exact_at(&mut n, 0).is_err() {
            fail!(
                Input,
                "{}: not a safetensors file (too short)",
                path.display()
            );
        }
        let n = u64::from_le_bytes(n);
        if n > 100_000_000 || n > size - 8 {
            fail!(
                Input,
                "{}: not a safetensors file (header length {n})",
                path.display()
            );
        }
        let mut head = vec![0u8; n as usize];
        file.read_exact_at(&mut head, 8)?;
        let meta: Metadata = match serde_json::from_slice(&head) {
            Ok(m) => m,
            Err(e) => fail!(Input, "{}: not a safetensors file: {e}", path.display()),
        };
        let end = meta.tensors().values().map(|i| i.data_offsets.1).max();
        if end.unwrap_or(0) as u64 != size - 8 - n {
            fail!(
                Input,
                "{}: not a safetensors file (truncated or damaged: the header does not match the file size)",
                path.display()
            );
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            data_start: 8 + n,
            meta,
        })
    }

    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.meta.metadata().as_ref()
    }

    /// Tensor names with their info, in file order.
    pub fn tensors(&self) -> Vec<(String, TensorInfo)> {
        let mut v: Vec<(String, TensorInfo)> = self
            .meta
            .tensors()
            .into_iter()
            .map(|(k, i)| (k, i.clone()))
            .collect();
        v.sort_by_key(|(_, i)| i.data_offsets.0);
        v
    }

    /// One tensor's raw bytes.
    pub fn bytes(&self, info: &TensorInfo) -> Result<Vec<u8>> {
        let (a, b) = info.data_offsets;
        let mut buf = vec![0u8; b - a];
        self.file
            .read_exact_at(&mut buf, self.data_start + a as u64)
            .with_context(|| format!("reading {}", self.path.display()))?;
        Ok(buf)
    }

    /// One f32 tensor's values (read straight into the result: no byte copy kept).
    pub fn f32s(&self, name: &str, info: &TensorInfo) -> Result<Vec<f32>> {
        if info.dtype != Dtype::F32 {
            fail!(Input, "{}: tensor '{name}' is not f32", self.path.display());
        }
        let (a, b) = info.data_offsets;
        let mut v = vec![0f32; (b - a) / 4];
        // SAFETY: an f32 slice viewed as its bytes (any bit pattern is a valid f32).
        let bytes = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, b - a) };
        self.file
            .read_exact_at(bytes, self.data_start + a as u64)
            .with_context(|| format!("reading {}", self.path.display()))?;
        if cfg!(target_endian = "big") {
            for x in &mut v {
                *x = f32::from_bits(x.to_bits().swap_bytes());
            }
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    /// Written in any order, the file is byte for byte what `safetensors::serialize` writes,
    /// and reads back.
    #[test]
    fn matches_serialize_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let a: Vec<f32> = (0..300).map(|i| i as f32 * 0.5).collect();
        let b: Vec<u8> = (0..16u64).flat_map(|x| x.to_le_bytes()).collect();
        let c: Vec<f32> = vec![1.0, -2.0, 3.5];
        let mut md = HashMap::new();
        md.insert("k".to_string(), "{\"x\":1}".to_string());
        let ab: Vec<u8> = a.iter().flat_map(|x| (x * 0.25).to_le_bytes()).collect();
        let cb: Vec<u8> = c.iter().flat_map(|x| x.to_le_bytes()).collect();
        let views = vec![
            (
                "zeta",
                TensorView::new(Dtype::F32, vec![3, 100], &ab).unwrap(),
            ),
            ("alpha", TensorView::new(Dtype::U64, vec![16], &b).unwrap()),
            ("mid", TensorView::new(Dtype::F32, vec![3], &cb).unwrap()),
        ];
        let expect = safetensors::serialize(views, Some(md.clone())).unwrap();
        let p = dir.path().join("x.safetensors");
        let specs = [
            Spec::new("zeta", Dtype::F32, vec![3, 100]),
            Spec::new("alpha", Dtype::U64, vec![16]),
            Spec::new("mid", Dtype::F32, vec![3]),
        ];
        let mut w = Writer::create(&p, &specs, Some(md), true).unwrap();
        w.write_f32("mid", &c, None).unwrap();
        w.write_f32("zeta", &a, Some(0.25)).unwrap();
        w.write("alpha", &b).unwrap();
        w.finish().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), expect);
        let r = Reader::open(&p).unwrap();
        let t = r.tensors();
        assert_eq!(t.len(), 3);
        let (_, zi) = t.iter().find(|(n, _)| n == "zeta").unwrap();
        let z = r.f32s("zeta", zi).unwrap();
        assert_eq!(z[10], a[10] * 0.25);
        assert_eq!(r.metadata().unwrap()["k"], "{\"x\":1}");
    }

    /// A file missing a tensor, or after a failed write, is never renamed into place.
    #[test]
    fn incomplete_file_is_not_published() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("y.safetensors");
        let specs = [Spec::new("a", Dtype::F32, vec![2])];
        let w = Writer::create(&p, &specs, None, true).unwrap();
        assert!(w.finish().is_err());
        let mut w = Writer::create(&p, &specs, None, true).unwrap();
        w.write_f32("a", &[1.0, 2.0], None).unwrap();
        assert!(
            w.write_f32("a", &[1.0, 2.0], None).is_err(),
            "written twice"
        );
        assert!(w.finish().is_err());
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
