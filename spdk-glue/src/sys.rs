//! The generated binding (build.rs: bindgen over `wrapper.h`, an allowlist of what ordo
//! calls). Nothing outside this crate sees it.

#![allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    reason = "names and items as bindgen generates them from SPDK's C headers"
)]
#![allow(
    clippy::missing_safety_doc,
    clippy::undocumented_unsafe_blocks,
    clippy::useless_transmute,
    clippy::ptr_offset_with_cast,
    clippy::upper_case_acronyms,
    reason = "generated code: the wrappers in this crate document every call they make"
)]

include!(concat!(env!("OUT_DIR"), "/sys.rs"));
