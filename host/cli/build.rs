//! With the `python` feature: an rpath to the building interpreter's
//! LIBDIR on the `cbs-host` binary, so that its workers load that
//! interpreter's libpython and not another one of the same soname found
//! first by the loader (e.g. Debian's in /usr/lib next to a pyenv Python).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "python")]
    {
        let config = pyo3_build_config::get();
        if let Some(dir) = &config.lib_dir {
            println!("cargo:rustc-link-arg-bin=cbs-host=-Wl,-rpath,{dir}");
        }
    }
}
