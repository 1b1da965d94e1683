//! Reading bodies without keeping them: the VM's memory budget that every kept byte is leased
//! from ([`budget`]), a bounded copy ([`capture`]) that keeps a body whole
//! up to a limit and then only its edges, field scans that find top-level JSON fields in
//! those edges ([`jsonscan`]), and content codings decoded on a copy ([`decode`]). Imports
//! nothing from the rest of the core.

pub mod budget;
pub mod capture;
pub mod decode;
pub mod jsonscan;
