//! Finds an installed SPDK (through `SPDK_DIR`, else pkg-config's own search path), links
//! its libraries (SPDK's archives whole, DPDK's and the system's shared) and generates the
//! narrow binding `sys.rs` from its headers. Without the `spdk` feature it does nothing:
//! the crate is then empty.
//!
//! Tested with SPDK built against Debian's shared DPDK, whose EAL loads its drivers from
//! its plugin directory; an SPDK with a bundled static DPDK would need DPDK's archives
//! whole too.

fn main() {
    println!("cargo:rerun-if-env-changed=SPDK_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    #[cfg(feature = "spdk")]
    spdk::build();
}

#[cfg(feature = "spdk")]
mod spdk {
    use std::env;
    use std::path::PathBuf;

    /// What ordo uses: the application framework (reactors), the bdev layer and its
    /// subsystem, every bdev module (malloc, aio, nvme, ...) and the modules they bring
    /// (accel, sock, keyring), the DPDK environment.
    const PACKAGES: [&str; 8] = [
        "spdk_event",
        "spdk_event_bdev",
        "spdk_bdev_modules",
        "spdk_accel_modules",
        "spdk_sock_modules",
        "spdk_keyring_modules",
        "spdk_env_dpdk",
        "spdk_syslibs",
    ];

    const HOW_TO: &str = "\
the `spdk` feature needs an installed SPDK (v25.09 is the version ordo is tested with).
Build SPDK from source (https://spdk.io/doc/getting_started.html; README.md, section
\"SPDK\", gives the exact steps for Debian's DPDK), then point ordo at it:
    SPDK_DIR=/path/to/spdk cargo build --features spdk
where /path/to/spdk/build/lib/pkgconfig holds spdk_bdev.pc. An SPDK installed with
`make install` is found through pkg-config without SPDK_DIR.";

    fn fail(what: &str) -> ! {
        eprintln!("error: {what}\n\n{HOW_TO}");
        std::process::exit(1);
    }

    pub fn build() {
        let pkgconfig_dir = env::var_os("SPDK_DIR").map(|dir| {
            let dir = PathBuf::from(dir).join("build/lib/pkgconfig");
            if !dir.join("spdk_bdev.pc").is_file() {
                fail(&format!(
                    "SPDK_DIR is set, but {} has no spdk_bdev.pc (is SPDK built there?)",
                    dir.display()
                ));
            }
            dir
        });
        if let Some(dir) = &pkgconfig_dir {
            let mut path = dir.as_os_str().to_owned();
            if let Some(old) = env::var_os("PKG_CONFIG_PATH") {
                path.push(":");
                path.push(old);
            }
            // pkg-config (the tool) reads it; the build script is single-threaded.
            env::set_var("PKG_CONFIG_PATH", path);
        }
        // Every package at once, with what they need privately: SPDK's own libraries
        // statically, DPDK's and the system's (libaio, libuuid, libnuma, ...) shared.
        let (mut link_paths, mut libs, mut include_paths) = (Vec::new(), Vec::new(), Vec::new());
        let (mut link_files, mut ld_args) = (Vec::new(), Vec::new());
        for package in PACKAGES {
            let library = pkg_config::Config::new()
                .cargo_metadata(false)
                .statik(true)
                .probe(package)
                .unwrap_or_else(|e| fail(&format!("SPDK not found: {e}")));
            for (have, new) in [
                (&mut link_paths, library.link_paths),
                (&mut include_paths, library.include_paths),
            ] {
                for item in new {
                    if !have.contains(&item) {
                        have.push(item);
                    }
                }
            }
            for lib in library.libs {
                if !libs.contains(&lib) {
                    libs.push(lib);
                }
            }
            // A library named by its path (ISA-L's libisal.a in an SPDK built with it).
            for file in library.link_files {
                if !link_files.contains(&file) {
                    link_files.push(file);
                }
            }
            ld_args.extend(library.ld_args);
        }
        for file in &link_files {
            link_file(file);
        }
        if !ld_args.is_empty() {
            println!(
                "cargo:warning=SPDK's pkg-config asks for linker flags ordo does not pass on: {ld_args:?}"
            );
        }
        for dir in &link_paths {
            println!("cargo:rustc-link-search=native={}", dir.display());
        }
        for lib in &libs {
            link(lib);
        }
        bind(&include_paths);
    }

    /// SPDK's modules (bdev_malloc, bdev_nvme, the subsystems) register themselves from
    /// constructors: nothing references their symbols, so a plain link would drop them.
    /// Each SPDK archive goes in whole; the rest as shared libraries.
    fn link(lib: &str) {
        if lib.starts_with("spdk_") {
            println!("cargo:rustc-link-lib=static:+whole-archive,-bundle={lib}");
        } else {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
    }

    /// `/dir/libNAME.a` (or `.so`) as a search path and a library, SPDK's way for ISA-L.
    fn link_file(file: &std::path::Path) {
        let (Some(dir), Some(name)) = (file.parent(), file.file_name().and_then(|n| n.to_str()))
        else {
            fail(&format!(
                "SPDK names a library ordo cannot link: {}",
                file.display()
            ));
        };
        println!("cargo:rustc-link-search=native={}", dir.display());
        let stem = name.trim_start_matches("lib");
        if let Some(archive) = stem.strip_suffix(".a") {
            println!("cargo:rustc-link-lib=static:+whole-archive,-bundle={archive}");
        } else if let Some(shared) = stem.split(".so").next().filter(|_| stem.contains(".so")) {
            println!("cargo:rustc-link-lib=dylib={shared}");
        } else {
            fail(&format!(
                "SPDK names a library ordo cannot link: {}",
                file.display()
            ));
        }
    }

    /// The binding: only the functions, types and constants ordo calls.
    fn bind(include_paths: &[PathBuf]) {
        println!("cargo:rerun-if-changed=src/wrapper.h");
        let mut builder = bindgen::Builder::default()
            .header("src/wrapper.h")
            .allowlist_function("spdk_env_opts_init")
            .allowlist_function("spdk_env_init")
            .allowlist_function("spdk_unaffinitize_thread")
            .allowlist_function("spdk_thread_lib_init")
            .allowlist_function("spdk_thread_create")
            .allowlist_function("spdk_set_thread")
            .allowlist_function("spdk_get_thread")
            .allowlist_function("spdk_thread_poll")
            .allowlist_function("spdk_thread_send_msg")
            .allowlist_function("spdk_thread_exit")
            .allowlist_function("spdk_thread_is_exited")
            .allowlist_function("spdk_thread_destroy")
            .allowlist_function("spdk_subsystem_init")
            .allowlist_function("spdk_subsystem_load_config")
            .allowlist_function("spdk_rpc_set_state")
            .allowlist_function("spdk_log_set_print_level")
            .allowlist_function("spdk_bdev_open_ext")
            .allowlist_function("spdk_bdev_get_by_name")
            .allowlist_function("spdk_bdev_unregister")
            .allowlist_function("spdk_bdev_close")
            .allowlist_function("spdk_bdev_desc_get_bdev")
            .allowlist_function("spdk_bdev_get_block_size")
            .allowlist_function("spdk_bdev_get_num_blocks")
            .allowlist_function("spdk_bdev_get_buf_align")
            .allowlist_function("spdk_bdev_io_type_supported")
            .allowlist_function("spdk_bdev_has_write_cache")
            .allowlist_function("spdk_bdev_get_md_size")
            .allowlist_function("spdk_bdev_is_zoned")
            .allowlist_function("spdk_bdev_get_write_unit_size")
            .allowlist_function("spdk_bdev_get_io_channel")
            .allowlist_function("spdk_put_io_channel")
            .allowlist_function("spdk_bdev_write")
            .allowlist_function("spdk_bdev_read")
            .allowlist_function("spdk_bdev_flush")
            .allowlist_function("spdk_bdev_write_zeroes")
            .allowlist_function("spdk_bdev_free_io")
            .allowlist_function("spdk_bdev_queue_io_wait")
            .allowlist_function("spdk_dma_zmalloc")
            .allowlist_function("spdk_dma_free")
            .allowlist_function("spdk_app_opts_init")
            .allowlist_function("spdk_app_start")
            .allowlist_function("spdk_app_stop")
            .allowlist_function("spdk_app_fini")
            .allowlist_function("spdk_thread_get_app_thread")
            .allowlist_function("spdk_poller_register")
            .allowlist_function("spdk_poller_unregister")
            .allowlist_function("spdk_cpuset_zero")
            .allowlist_function("spdk_cpuset_set_cpu")
            .allowlist_function("spdk_env_get_current_core")
            .allowlist_type("spdk_thread_poller_rc")
            .allowlist_type("spdk_bdev_io_wait_entry")
            .allowlist_var("SPDK_RPC_STARTUP")
            .allowlist_var("SPDK_RPC_RUNTIME")
            .default_enum_style(bindgen::EnumVariation::Rust {
                non_exhaustive: false,
            })
            // Opaque to us: only ever behind a pointer.
            .opaque_type("spdk_bdev")
            .opaque_type("spdk_bdev_desc")
            .opaque_type("spdk_bdev_io")
            .opaque_type("spdk_io_channel")
            .opaque_type("spdk_thread")
            .layout_tests(false)
            .generate_comments(false);
        for path in include_paths {
            builder = builder.clang_arg(format!("-I{}", path.display()));
        }
        let bindings = builder
            .generate()
            .unwrap_or_else(|e| fail(&format!("generating the SPDK binding failed: {e}")));
        let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        bindings
            .write_to_file(out.join("sys.rs"))
            .unwrap_or_else(|e| fail(&format!("writing the SPDK binding failed: {e}")));
    }
}
