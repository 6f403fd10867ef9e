//! Bounded XDR decoding of call arguments into `nfs3_types` structures.
//!
//! `nfs3_types`' own `Unpack` allocates whatever a length field says before
//! reading (`vec![0; len]`, `Vec::with_capacity(len)`), so a 12-byte request
//! announcing a 4 GiB opaque could abort the process. Requests are untrusted,
//! so arguments are decoded here from the in-memory record: every length is
//! checked against the bytes actually left before anything is allocated or
//! borrowed. Replies are encoded with `nfs3_types`' `Pack`, which is safe.

use nfs3_server::nfs3_types::nfs3::{
    createhow3, createverf3, devicedata3, diropargs3, filename3, mknoddata3, nfs_fh3, nfspath3,
    nfstime3, sattr3, set_atime, set_mtime, specdata3, stable_how, ACCESS3args, COMMIT3args,
    CREATE3args, LINK3args, MKDIR3args, MKNOD3args, Nfs3Option, READ3args, READDIR3args,
    READDIRPLUS3args, RENAME3args, SETATTR3args, SYMLINK3args, WRITE3args, NFS3_FHSIZE,
};
use nfs3_server::nfs3_types::xdr_codec::Opaque;

/// The arguments do not decode (truncated, bad enum value, oversized
/// length): the call gets GARBAGE_ARGS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Garbage;

pub(crate) type XdrResult<T> = Result<T, Garbage>;

/// A cursor over one received record (or a part of it).
pub(crate) struct XdrIn<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> XdrIn<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        XdrIn { buf, pos: 0 }
    }

    /// Bytes not consumed yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    fn take(&mut self, n: usize) -> XdrResult<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return Err(Garbage);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn u32(&mut self) -> XdrResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> XdrResult<u64> {
        let hi = self.u32()?;
        let lo = self.u32()?;
        Ok(((hi as u64) << 32) | lo as u64)
    }

    pub(crate) fn bool(&mut self) -> XdrResult<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Garbage),
        }
    }

    /// Variable-length opaque (or string) of at most `max` bytes, padding
    /// skipped. Borrowed from the record: nothing is allocated.
    pub(crate) fn opaque(&mut self, max: usize) -> XdrResult<&'a [u8]> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(Garbage);
        }
        let padded = len.checked_add(3).ok_or(Garbage)? & !3;
        let b = self.take(padded)?;
        Ok(&b[..len])
    }

    pub(crate) fn fixed<const N: usize>(&mut self) -> XdrResult<[u8; N]> {
        let padded = (N + 3) & !3;
        let b = self.take(padded)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&b[..N]);
        Ok(out)
    }

    // ---- NFS3 / MOUNT3 building blocks -------------------------------

    /// `nfs_fh3`: opaque<64>.
    pub(crate) fn fh(&mut self) -> XdrResult<nfs_fh3> {
        let data = self.opaque(NFS3_FHSIZE)?;
        Ok(nfs_fh3 {
            data: Opaque::owned(data.to_vec()),
        })
    }

    /// `filename3`: an unbounded string on the wire; the 255-byte limit is
    /// a semantic check (NAMETOOLONG), not a decoding error.
    pub(crate) fn filename(&mut self) -> XdrResult<filename3<'a>> {
        Ok(filename3(Opaque::borrowed(self.opaque(usize::MAX)?)))
    }

    pub(crate) fn path(&mut self) -> XdrResult<nfspath3<'a>> {
        Ok(nfspath3(Opaque::borrowed(self.opaque(usize::MAX)?)))
    }

    pub(crate) fn diropargs(&mut self) -> XdrResult<diropargs3<'a>> {
        Ok(diropargs3 {
            dir: self.fh()?,
            name: self.filename()?,
        })
    }

    pub(crate) fn time(&mut self) -> XdrResult<nfstime3> {
        Ok(nfstime3 {
            seconds: self.u32()?,
            nseconds: self.u32()?,
        })
    }

    fn opt_u32(&mut self) -> XdrResult<Nfs3Option<u32>> {
        Ok(if self.bool()? {
            Nfs3Option::Some(self.u32()?)
        } else {
            Nfs3Option::None
        })
    }

    pub(crate) fn sattr(&mut self) -> XdrResult<sattr3> {
        let mode = self.opt_u32()?;
        let uid = self.opt_u32()?;
        let gid = self.opt_u32()?;
        let size = if self.bool()? {
            Nfs3Option::Some(self.u64()?)
        } else {
            Nfs3Option::None
        };
        let atime = match self.u32()? {
            0 => set_atime::DONT_CHANGE,
            1 => set_atime::SET_TO_SERVER_TIME,
            2 => set_atime::SET_TO_CLIENT_TIME(self.time()?),
            _ => return Err(Garbage),
        };
        let mtime = match self.u32()? {
            0 => set_mtime::DONT_CHANGE,
            1 => set_mtime::SET_TO_SERVER_TIME,
            2 => set_mtime::SET_TO_CLIENT_TIME(self.time()?),
            _ => return Err(Garbage),
        };
        Ok(sattr3 {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        })
    }

    // ---- procedure arguments -----------------------------------------

    pub(crate) fn setattr_args(&mut self) -> XdrResult<SETATTR3args> {
        let object = self.fh()?;
        let new_attributes = self.sattr()?;
        let guard = if self.bool()? {
            Nfs3Option::Some(self.time()?)
        } else {
            Nfs3Option::None
        };
        Ok(SETATTR3args {
            object,
            new_attributes,
            guard,
        })
    }

    pub(crate) fn access_args(&mut self) -> XdrResult<ACCESS3args> {
        Ok(ACCESS3args {
            object: self.fh()?,
            access: self.u32()?,
        })
    }

    pub(crate) fn read_args(&mut self) -> XdrResult<READ3args> {
        Ok(READ3args {
            file: self.fh()?,
            offset: self.u64()?,
            count: self.u32()?,
        })
    }

    pub(crate) fn write_args(&mut self) -> XdrResult<WRITE3args<'a>> {
        let file = self.fh()?;
        let offset = self.u64()?;
        let count = self.u32()?;
        let stable = match self.u32()? {
            0 => stable_how::UNSTABLE,
            1 => stable_how::DATA_SYNC,
            2 => stable_how::FILE_SYNC,
            _ => return Err(Garbage),
        };
        let data = Opaque::borrowed(self.opaque(usize::MAX)?);
        Ok(WRITE3args {
            file,
            offset,
            count,
            stable,
            data,
        })
    }

    pub(crate) fn create_args(&mut self) -> XdrResult<CREATE3args<'a>> {
        let where_ = self.diropargs()?;
        let how = match self.u32()? {
            0 => createhow3::UNCHECKED(self.sattr()?),
            1 => createhow3::GUARDED(self.sattr()?),
            2 => createhow3::EXCLUSIVE(createverf3(self.fixed()?)),
            _ => return Err(Garbage),
        };
        Ok(CREATE3args { where_, how })
    }

    pub(crate) fn mkdir_args(&mut self) -> XdrResult<MKDIR3args<'a>> {
        Ok(MKDIR3args {
            where_: self.diropargs()?,
            attributes: self.sattr()?,
        })
    }

    pub(crate) fn symlink_args(&mut self) -> XdrResult<SYMLINK3args<'a>> {
        let where_ = self.diropargs()?;
        let symlink_attributes = self.sattr()?;
        let symlink_data = self.path()?;
        Ok(SYMLINK3args {
            where_,
            symlink: nfs3_server::nfs3_types::nfs3::symlinkdata3 {
                symlink_attributes,
                symlink_data,
            },
        })
    }

    /// Types other than CHR/BLK/SOCK/FIFO decode to `mknoddata3::default`
    /// (the XDR union's void default): the call gets NFS3ERR_BADTYPE.
    pub(crate) fn mknod_args(&mut self) -> XdrResult<MKNOD3args<'a>> {
        let where_ = self.diropargs()?;
        let kind = self.u32()?;
        let what = match kind {
            3 | 4 => {
                let dev = devicedata3 {
                    dev_attributes: self.sattr()?,
                    spec: specdata3 {
                        specdata1: self.u32()?,
                        specdata2: self.u32()?,
                    },
                };
                if kind == 3 {
                    mknoddata3::NF3BLK(dev)
                } else {
                    mknoddata3::NF3CHR(dev)
                }
            }
            6 => mknoddata3::NF3SOCK(self.sattr()?),
            7 => mknoddata3::NF3FIFO(self.sattr()?),
            _ => mknoddata3::default,
        };
        Ok(MKNOD3args { where_, what })
    }

    pub(crate) fn rename_args(&mut self) -> XdrResult<RENAME3args<'a, 'a>> {
        Ok(RENAME3args {
            from: self.diropargs()?,
            to: self.diropargs()?,
        })
    }

    pub(crate) fn link_args(&mut self) -> XdrResult<LINK3args<'a>> {
        Ok(LINK3args {
            file: self.fh()?,
            link: self.diropargs()?,
        })
    }

    pub(crate) fn readdir_args(&mut self) -> XdrResult<READDIR3args> {
        Ok(READDIR3args {
            dir: self.fh()?,
            cookie: self.u64()?,
            cookieverf: nfs3_server::nfs3_types::nfs3::cookieverf3(self.fixed()?),
            count: self.u32()?,
        })
    }

    pub(crate) fn readdirplus_args(&mut self) -> XdrResult<READDIRPLUS3args> {
        Ok(READDIRPLUS3args {
            dir: self.fh()?,
            cookie: self.u64()?,
            cookieverf: nfs3_server::nfs3_types::nfs3::cookieverf3(self.fixed()?),
            dircount: self.u32()?,
            maxcount: self.u32()?,
        })
    }

    pub(crate) fn commit_args(&mut self) -> XdrResult<COMMIT3args> {
        Ok(COMMIT3args {
            file: self.fh()?,
            offset: self.u64()?,
            count: self.u32()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nfs3_server::nfs3_types::nfs3::{cookieverf3, symlinkdata3, LOOKUP3args};
    use nfs3_server::nfs3_types::xdr_codec::Pack;

    fn packed<T: Pack>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        v.pack(&mut out).unwrap();
        out
    }

    fn fh(b: &[u8]) -> nfs_fh3 {
        nfs_fh3 {
            data: Opaque::owned(b.to_vec()),
        }
    }

    fn full_sattr() -> sattr3 {
        sattr3 {
            mode: Nfs3Option::Some(0o4755),
            uid: Nfs3Option::Some(1000),
            gid: Nfs3Option::None,
            size: Nfs3Option::Some(1 << 40),
            atime: set_atime::SET_TO_SERVER_TIME,
            mtime: set_mtime::SET_TO_CLIENT_TIME(nfstime3 {
                seconds: 1_700_000_000,
                nseconds: 5,
            }),
        }
    }

    /// Packing with `nfs3_types` and decoding with ours gives the same
    /// values (compared through `Debug`, as not every type is `PartialEq`),
    /// and consumes every byte.
    fn round_trip<T: Pack + std::fmt::Debug>(
        v: &T,
        decode: impl Fn(&mut XdrIn<'_>) -> XdrResult<String>,
    ) {
        let bytes = packed(v);
        let mut r = XdrIn::new(&bytes);
        assert_eq!(decode(&mut r).unwrap(), format!("{v:?}"));
        assert!(r.rest().is_empty(), "left over bytes");
        // Every strict prefix is garbage, never a panic.
        for cut in 0..bytes.len() {
            let mut r = XdrIn::new(&bytes[..cut]);
            assert_eq!(decode(&mut r), Err(Garbage), "prefix of {cut} bytes");
        }
    }

    #[test]
    fn lookup_round_trip() {
        let v = LOOKUP3args {
            what: diropargs3 {
                dir: fh(&[1, 2, 3, 4, 5]),
                name: filename3(Opaque::borrowed(b"hello.txt")),
            },
        };
        round_trip(&v, |r| {
            Ok(format!(
                "{:?}",
                LOOKUP3args {
                    what: r.diropargs()?
                }
            ))
        });
    }

    #[test]
    fn setattr_round_trip() {
        let v = SETATTR3args {
            object: fh(&[9; 32]),
            new_attributes: full_sattr(),
            guard: Nfs3Option::Some(nfstime3 {
                seconds: 7,
                nseconds: 8,
            }),
        };
        round_trip(&v, |r| Ok(format!("{:?}", r.setattr_args()?)));
    }

    #[test]
    fn write_round_trip() {
        let v = WRITE3args {
            file: fh(&[7; 28]),
            offset: 1 << 33,
            count: 5,
            stable: stable_how::FILE_SYNC,
            data: Opaque::borrowed(b"abcde"),
        };
        round_trip(&v, |r| Ok(format!("{:?}", r.write_args()?)));
    }

    #[test]
    fn create_symlink_mknod_rename_round_trip() {
        for how in [
            createhow3::UNCHECKED(full_sattr()),
            createhow3::GUARDED(sattr3::default()),
            createhow3::EXCLUSIVE(createverf3(*b"verifier")),
        ] {
            let v = CREATE3args {
                where_: diropargs3 {
                    dir: fh(&[1; 32]),
                    name: filename3(Opaque::borrowed(b"new")),
                },
                how,
            };
            round_trip(&v, |r| Ok(format!("{:?}", r.create_args()?)));
        }
        let v = SYMLINK3args {
            where_: diropargs3 {
                dir: fh(&[2; 32]),
                name: filename3(Opaque::borrowed(b"ln")),
            },
            symlink: symlinkdata3 {
                symlink_attributes: sattr3::default(),
                symlink_data: nfspath3(Opaque::borrowed(b"../target")),
            },
        };
        round_trip(&v, |r| Ok(format!("{:?}", r.symlink_args()?)));
        for what in [
            mknoddata3::NF3CHR(devicedata3 {
                dev_attributes: full_sattr(),
                spec: specdata3 {
                    specdata1: 1,
                    specdata2: 3,
                },
            }),
            mknoddata3::NF3BLK(devicedata3 {
                dev_attributes: sattr3::default(),
                spec: specdata3 {
                    specdata1: 7,
                    specdata2: 0,
                },
            }),
            mknoddata3::NF3FIFO(sattr3::default()),
            mknoddata3::NF3SOCK(sattr3::default()),
        ] {
            let v = MKNOD3args {
                where_: diropargs3 {
                    dir: fh(&[3; 32]),
                    name: filename3(Opaque::borrowed(b"dev")),
                },
                what,
            };
            round_trip(&v, |r| Ok(format!("{:?}", r.mknod_args()?)));
        }
        let v = RENAME3args {
            from: diropargs3 {
                dir: fh(&[4; 32]),
                name: filename3(Opaque::borrowed(b"a")),
            },
            to: diropargs3 {
                dir: fh(&[5; 32]),
                name: filename3(Opaque::borrowed(b"bb")),
            },
        };
        round_trip(&v, |r| Ok(format!("{:?}", r.rename_args()?)));
        let v = READDIRPLUS3args {
            dir: fh(&[6; 32]),
            cookie: 42,
            cookieverf: cookieverf3(*b"cookieve"),
            dircount: 4096,
            maxcount: 32768,
        };
        round_trip(&v, |r| Ok(format!("{:?}", r.readdirplus_args()?)));
    }

    #[test]
    fn huge_lengths_are_garbage_without_allocating() {
        // A 4 GiB opaque announced in 4 bytes.
        let bytes = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert_eq!(XdrIn::new(&bytes).filename().map(|_| ()), Err(Garbage));
        // A file handle longer than 64 bytes.
        let mut b = 65u32.to_be_bytes().to_vec();
        b.extend_from_slice(&[0; 68]);
        assert_eq!(XdrIn::new(&b).fh(), Err(Garbage));
        // Bad enum and bool values.
        assert_eq!(XdrIn::new(&2u32.to_be_bytes()).bool(), Err(Garbage));
        let mut b = packed(&fh(&[1; 4]));
        b.extend_from_slice(&0u64.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&3u32.to_be_bytes()); // stable_how 3
        b.extend_from_slice(&0u32.to_be_bytes());
        assert!(XdrIn::new(&b).write_args().is_err());
    }

    #[test]
    fn mknod_of_a_regular_file_is_the_default_arm() {
        let mut b = packed(&diropargs3 {
            dir: fh(&[1; 8]),
            name: filename3(Opaque::borrowed(b"x")),
        });
        b.extend_from_slice(&1u32.to_be_bytes()); // NF3REG
        let a = XdrIn::new(&b).mknod_args().unwrap();
        assert!(matches!(a.what, mknoddata3::default));
    }
}
