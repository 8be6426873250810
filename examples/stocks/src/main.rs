//! `stocks`: the example app's processes (see the crate docs).

fn main() {
    println!("stocks");
}
