//! eStargz layers (stub: being written).
