//! Benchmark driver for bench/archive.sh: runs one archive operation and prints its timing.
//!   archive_bench create SRC DEST            -> archive SRC into DEST
//!   archive_bench restore ARCHIVE SHA TARGET -> restore_swap
//!   archive_bench resnapshot SRC PREV DEST   -> tree_unchanged + reuse (or create when changed)
//!   archive_bench verify ARCHIVE SHA         -> deep_verify against its file list
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::time::Instant;

use slipway_jobs::adapters::archive;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let t = Instant::now();
    match args.get(1).map(String::as_str) {
        Some("create") => {
            let s = archive::create(Path::new(&args[2]), Path::new(&args[3]))?;
            println!("{} {} {} {:.3}", s.sha256, s.size, s.bytes_in, t.elapsed().as_secs_f64());
        }
        Some("restore") => {
            let n = archive::restore_swap(Path::new(&args[2]), &args[3], Path::new(&args[4]))?;
            println!("{n} {:.3}", t.elapsed().as_secs_f64());
        }
        Some("resnapshot") => {
            let (src, prev, dest) = (Path::new(&args[2]), Path::new(&args[3]), Path::new(&args[4]));
            if archive::tree_unchanged(src, &archive::file_list_path(prev))? {
                archive::reuse(prev, dest)?;
                println!("reused {:.3}", t.elapsed().as_secs_f64());
            } else {
                archive::create(src, dest)?;
                println!("archived {:.3}", t.elapsed().as_secs_f64());
            }
        }
        Some("verify") => {
            let a = Path::new(&args[2]);
            archive::deep_verify(a, &args[3], &archive::file_list_path(a))?;
            println!("ok {:.3}", t.elapsed().as_secs_f64());
        }
        _ => return Err("usage: archive_bench create|restore|resnapshot|verify ...".into()),
    }
    Ok(())
}
