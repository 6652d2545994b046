pub mod cidr;
pub mod key;
pub mod scope;
