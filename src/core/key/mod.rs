//! Pure key handling: the text format, its signature, random material and the stored
//! hash. Nothing here touches Postgres, so plain `#[test]`s and proptests cover it.

pub(crate) mod format;
pub(crate) mod hash;
pub(crate) mod secret;
pub(crate) mod signature;
