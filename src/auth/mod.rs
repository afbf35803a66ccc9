//! Who may connect and what they may do: device credentials and topic permissions.

pub mod acl;
pub mod devices;
pub mod passwd;
