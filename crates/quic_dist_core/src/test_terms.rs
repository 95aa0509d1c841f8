//! Distribution packets built by hand for tests: terms as `term_to_binary/1` encodes them
//! (without the leading 131), and packets `131, 68, 0, Control, Message`.

pub(crate) fn atom(name: &str) -> Vec<u8> {
    let mut v = vec![119, name.len() as u8];
    v.extend_from_slice(name.as_bytes());
    v
}
pub(crate) fn pid(node: &str, id: u32) -> Vec<u8> {
    let mut v = vec![88];
    v.extend(atom(node));
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&0u32.to_be_bytes());
    v.extend_from_slice(&7u32.to_be_bytes());
    v
}
pub(crate) fn reference(node: &str) -> Vec<u8> {
    let mut v = vec![90, 0, 3];
    v.extend(atom(node));
    v.extend_from_slice(&7u32.to_be_bytes());
    v.extend_from_slice(&[0; 12]);
    v
}
pub(crate) fn tuple(elems: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![104, elems.len() as u8];
    for e in elems {
        v.extend_from_slice(e);
    }
    v
}
pub(crate) fn small(n: u8) -> Vec<u8> {
    vec![97, n]
}
pub(crate) fn packet(control: Vec<u8>, message: &[u8]) -> Vec<u8> {
    let mut v = vec![131, 68, 0];
    v.extend(control);
    v.extend_from_slice(message);
    v
}

pub(crate) fn first_fragment(seq: u64, frag: u64, control: Vec<u8>, message: &[u8]) -> Vec<u8> {
    let mut v = vec![131, 69];
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&frag.to_be_bytes());
    v.push(0);
    v.extend(control);
    v.extend_from_slice(message);
    v
}
pub(crate) fn next_fragment(seq: u64, frag: u64, data: &[u8]) -> Vec<u8> {
    let mut v = vec![131, 70];
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&frag.to_be_bytes());
    v.extend_from_slice(data);
    v
}
