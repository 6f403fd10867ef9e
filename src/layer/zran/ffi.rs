//! The zlib inflate stream behind checkpoint building and decoding: every
//! call into zlib, and so every `unsafe` block of the zran code, is here.

use super::{ZranError, WINDOW_SIZE};
use libz_rs_sys::{
    inflate, inflateEnd, inflateGetDictionary, inflateInit2_, inflateMark, inflatePrime,
    inflateReset, inflateSetDictionary, z_stream, zlibVersion, Z_DATA_ERROR, Z_MEM_ERROR,
    Z_NEED_DICT,
};
use std::ffi::{c_int, c_long, CStr};

// Flush modes and return codes, so callers need not name the zlib crate.
pub(super) use libz_rs_sys::{Z_BLOCK, Z_BUF_ERROR, Z_NO_FLUSH, Z_OK, Z_STREAM_END};

/// gzip windowBits for inflateInit2: 15-bit window, +16 = gzip wrapper only
/// (so a zlib or raw stream is rejected instead of silently accepted).
pub(super) const GZIP_WBITS: c_int = 15 + 16;
pub(super) const RAW_WBITS: c_int = -15;

/// Owns one zlib inflate stream. All unsafe FFI is confined here.
pub(super) struct Inflater {
    // Boxed because zlib's state may refer back to the z_stream's address.
    strm: Box<z_stream>,
}

// SAFETY: the z_stream and its state are owned exclusively by this value and
// use the Rust global allocator; nothing is tied to the creating thread, and
// `step` never leaves pointers to borrowed buffers behind in the stream.
unsafe impl Send for Inflater {}

/// Outcome of one `inflate` call.
pub(super) struct Step {
    pub(super) ret: c_int,
    pub(super) consumed: usize,
    pub(super) produced: usize,
    data_type: c_int,
    /// inflateMark: 0 exactly when stopped before a literal/length code
    /// with nothing of it decoded yet.
    pub(super) mark: c_long,
}

impl Step {
    /// At a deflate block boundary that is not the end of the stream
    /// (zlib's `data_type`: 128 = waiting for a block header, 64 = last
    /// block already decoded).
    pub(super) fn at_block_boundary(&self) -> bool {
        self.data_type & 0xc0 == 0x80
    }

    /// Waiting for a block header, or done with the last block.
    pub(super) fn before_block_header(&self) -> bool {
        self.data_type & 0x80 != 0
    }

    /// Bits the inflater took from the input but has not decoded yet.
    pub(super) fn pending_bits(&self) -> u64 {
        (self.data_type & 0x3f) as u64
    }
}

impl Inflater {
    pub(super) fn new(window_bits: c_int) -> Result<Self, ZranError> {
        let mut strm = Box::new(z_stream::default());
        // SAFETY: `strm` is a default stream with the allocator set, the
        // version string comes from the library itself.
        let ret = unsafe {
            inflateInit2_(
                &mut *strm,
                window_bits,
                zlibVersion(),
                std::mem::size_of::<z_stream>() as c_int,
            )
        };
        if ret != Z_OK {
            return Err(ZranError::Inflate {
                msg: format!("inflateInit2 failed (code {ret})"),
            });
        }
        Ok(Inflater { strm })
    }

    fn check(&self, what: &str, ret: c_int) -> Result<(), ZranError> {
        if ret == Z_OK {
            Ok(())
        } else {
            Err(ZranError::Inflate {
                msg: format!("{what} failed (code {ret})"),
            })
        }
    }

    pub(super) fn reset(&mut self) -> Result<(), ZranError> {
        // SAFETY: the stream was initialised in `new`.
        let ret = unsafe { inflateReset(&mut *self.strm) };
        self.check("inflateReset", ret)
    }

    pub(super) fn prime(&mut self, bits: u8, value: u8) -> Result<(), ZranError> {
        // SAFETY: the stream was initialised in `new`.
        let ret = unsafe { inflatePrime(&mut *self.strm, c_int::from(bits), c_int::from(value)) };
        self.check("inflatePrime", ret)
    }

    pub(super) fn set_dictionary(&mut self, dict: &[u8]) -> Result<(), ZranError> {
        // SAFETY: the stream was initialised in `new`; `dict` is valid for
        // its length, which the caller keeps within 32 KiB.
        let ret =
            unsafe { inflateSetDictionary(&mut *self.strm, dict.as_ptr(), dict.len() as u32) };
        self.check("inflateSetDictionary", ret)
    }

    /// The inflater's window: the output since the member started, up to
    /// the last 32 KiB.
    pub(super) fn dictionary(&self) -> Vec<u8> {
        let mut dict = vec![0u8; WINDOW_SIZE];
        let mut len: u32 = 0;
        // SAFETY: the stream was initialised in `new`; with a 15-bit window
        // zlib copies at most 32 KiB, which `dict` has room for.
        unsafe { inflateGetDictionary(&*self.strm, dict.as_mut_ptr(), &mut len) };
        dict.truncate((len as usize).min(WINDOW_SIZE));
        dict
    }

    pub(super) fn step(&mut self, input: &[u8], output: &mut [u8], flush: c_int) -> Step {
        let in_len = input.len().min(u32::MAX as usize) as u32;
        let out_len = output.len().min(u32::MAX as usize) as u32;
        let s = &mut *self.strm;
        s.next_in = input.as_ptr();
        s.avail_in = in_len;
        s.next_out = output.as_mut_ptr();
        s.avail_out = out_len;
        // SAFETY: the stream was initialised in `new`; next_in/next_out
        // point into live slices of at least avail_in/avail_out bytes.
        let ret = unsafe { inflate(s, flush) };
        // SAFETY: as above; inflateMark only reads the state, and needs
        // next_out still set.
        let mark = unsafe { inflateMark(s) };
        let step = Step {
            ret,
            consumed: (in_len - s.avail_in) as usize,
            produced: (out_len - s.avail_out) as usize,
            data_type: s.data_type,
            mark,
        };
        // The slices are only borrowed for this call.
        s.next_in = std::ptr::null();
        s.avail_in = 0;
        s.next_out = std::ptr::null_mut();
        s.avail_out = 0;
        step
    }

    /// A readable description of a failed `inflate` return code.
    pub(super) fn error_text(&self, ret: c_int) -> String {
        let zmsg = if self.strm.msg.is_null() {
            None
        } else {
            // SAFETY: zlib sets `msg` to a static NUL-terminated string.
            Some(
                unsafe { CStr::from_ptr(self.strm.msg) }
                    .to_string_lossy()
                    .into_owned(),
            )
        };
        match (ret, zmsg.as_deref()) {
            (_, Some("incorrect data check")) => {
                "CRC32 mismatch in the gzip trailer (incorrect data check)".to_string()
            }
            (_, Some("incorrect length check")) => {
                "uncompressed size mismatch in the gzip trailer (incorrect length check)"
                    .to_string()
            }
            (_, Some("incorrect header check")) => {
                "not a gzip stream (incorrect header magic)".to_string()
            }
            (_, Some(m)) => format!("invalid deflate data ({m})"),
            (Z_DATA_ERROR, None) => "invalid deflate data".to_string(),
            (Z_NEED_DICT, None) => "stream needs a preset dictionary".to_string(),
            (Z_MEM_ERROR, None) => "zlib ran out of memory".to_string(),
            (code, None) => format!("inflate failed (code {code})"),
        }
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised in `new` and is ended once.
        unsafe { inflateEnd(&mut *self.strm) };
    }
}
