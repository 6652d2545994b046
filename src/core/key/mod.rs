//! Pure key handling: the text format, random material and the stored hash.
//! Nothing here touches Postgres, so plain `#[test]`s and proptests cover it.

pub mod format;
pub mod hash;
pub mod secret;
