fn main() {
    println!("sfmc-relay");
}
