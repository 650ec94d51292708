//! Minimal `.npy` reader for reference dumps: format 1.0–3.0, little-endian `<f4` and `<i4`,
//! C order. Anything else is an error naming the file.

use std::path::Path;

use anyhow::{bail, ensure, Context};
use candle_core::{Device, Tensor};

/// The array's element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    F32,
    I32,
}

/// A parsed `.npy` file: shape plus raw little-endian data.
pub struct Npy {
    pub kind: Kind,
    pub shape: Vec<usize>,
    data: Vec<u8>,
}

impl Npy {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&bytes).with_context(|| format!("parsing {}", path.display()))
    }

    fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        ensure!(
            bytes.len() >= 10 && &bytes[..6] == b"\x93NUMPY",
            "not an .npy file"
        );
        let (header_len, start) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 => {
                ensure!(bytes.len() >= 12, "truncated header");
                let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
                (n as usize, 12)
            }
            v => bail!("unsupported .npy version {v}"),
        };
        ensure!(bytes.len() >= start + header_len, "truncated header");
        let header = std::str::from_utf8(&bytes[start..start + header_len])?;
        let field = |key: &str| -> anyhow::Result<&str> {
            let at = header
                .find(&format!("'{key}':"))
                .with_context(|| format!("header has no `{key}`: {header}"))?;
            Ok(header[at + key.len() + 3..].trim_start())
        };
        let descr = field("descr")?;
        let kind = if descr.starts_with("'<f4'") {
            Kind::F32
        } else if descr.starts_with("'<i4'") {
            Kind::I32
        } else {
            bail!("unsupported dtype in {header} (want '<f4' or '<i4')")
        };
        ensure!(
            field("fortran_order")?.starts_with("False"),
            "Fortran order is not supported"
        );
        let shape_src = field("shape")?;
        let close = shape_src.find(')').context("malformed shape")?;
        let shape = shape_src[1..close]
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<usize>().context("malformed shape"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let data = bytes[start + header_len..].to_vec();
        let n: usize = shape.iter().product();
        ensure!(
            data.len() == n * 4,
            "data has {} bytes, shape {shape:?} needs {}",
            data.len(),
            n * 4
        );
        Ok(Self { kind, shape, data })
    }

    pub fn f32s(&self) -> anyhow::Result<Vec<f32>> {
        ensure!(self.kind == Kind::F32, "array is {:?}, not f32", self.kind);
        Ok(self
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    pub fn i32s(&self) -> anyhow::Result<Vec<i32>> {
        ensure!(self.kind == Kind::I32, "array is {:?}, not i32", self.kind);
        Ok(self
            .data
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// An f32 array as a CPU tensor of its shape.
    pub fn tensor(&self) -> anyhow::Result<Tensor> {
        Ok(Tensor::from_vec(
            self.f32s()?,
            self.shape.as_slice(),
            &Device::Cpu,
        )?)
    }
}

#[test]
fn npy_parses_f32_and_i32_and_rejects_other_dtypes() -> anyhow::Result<()> {
    fn file(descr: &str, shape: &str, payload: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((h.len() as u16).to_le_bytes());
        b.extend(h.as_bytes());
        b.extend(payload);
        b
    }
    let f: Vec<u8> = [1.5f32, -2.0, 0.25, 8.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let a = Npy::parse(&file("<f4", "(2, 2)", &f))?;
    assert_eq!(a.shape, [2, 2]);
    assert_eq!(a.f32s()?, [1.5, -2.0, 0.25, 8.0]);
    let i: Vec<u8> = [3i32, -7].iter().flat_map(|x| x.to_le_bytes()).collect();
    let b = Npy::parse(&file("<i4", "(2,)", &i))?;
    assert_eq!(
        (b.shape.as_slice(), b.i32s()?),
        (&[2usize][..], vec![3, -7])
    );
    assert!(b.f32s().is_err());
    assert!(Npy::parse(&file("<f8", "(1,)", &[0; 8])).is_err());
    assert!(Npy::parse(&file("<f4", "(3,)", &f)).is_err());
    Ok(())
}
