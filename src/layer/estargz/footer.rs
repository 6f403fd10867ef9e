//! The footer: an empty gzip member whose extra field holds the TOC's
//! offset, which tells an eStargz blob from a plain gzip one.

use super::{EstargzError, FOOTER_SIZE};
use flate2::read::GzDecoder;
use std::io::Read;

/// Parse the last [`FOOTER_SIZE`] bytes of a blob. `Ok(None)` means this is
/// not an eStargz blob (read it as plain gzip); `Ok(Some(offset))` gives the
/// blob offset of the TOC member.
pub(crate) fn parse_footer(footer: &[u8]) -> Result<Option<u64>, EstargzError> {
    if footer.len() as u64 != FOOTER_SIZE {
        return Err(EstargzError::FooterSize(footer.len()));
    }
    const FEXTRA: u8 = 0x04;
    // FHCRC, FNAME and FCOMMENT would move the extra field's neighbours and
    // never appear in a footer; FTEXT is harmless.
    let header_ok = footer[0] == 0x1f
        && footer[1] == 0x8b
        && footer[2] == 8
        && footer[3] & 0xfe == FEXTRA
        && u16::from_le_bytes([footer[10], footer[11]]) == 26
        && &footer[12..14] == b"SG"
        && u16::from_le_bytes([footer[14], footer[15]]) == 22
        && &footer[32..38] == b"STARGZ";
    if !header_ok {
        return Ok(None);
    }
    let hex = &footer[16..32];
    // from_str_radix alone would also take a leading '+'.
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(EstargzError::FooterOffset(
            String::from_utf8_lossy(hex).into_owned(),
        ));
    }
    let text = std::str::from_utf8(hex).expect("ascii hex digits");
    let offset =
        u64::from_str_radix(text, 16).map_err(|_| EstargzError::FooterOffset(text.to_string()))?;
    // Decoding the member checks its deflate block and CRC, so a footer whose
    // tail was damaged is reported instead of silently trusted.
    let mut rest = Vec::new();
    GzDecoder::new(footer)
        .read_to_end(&mut rest)
        .map_err(|e| EstargzError::FooterMember(e.to_string()))?;
    if !rest.is_empty() {
        return Err(EstargzError::FooterMember(format!(
            "it holds {} bytes of data",
            rest.len()
        )));
    }
    Ok(Some(offset))
}
