//! tgtadm: tgt's management client (see `rtgt_mgmt::cli`).

fn main() {
    std::process::exit(rtgt_mgmt::cli::run(
        std::env::args_os().collect(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    ))
}
