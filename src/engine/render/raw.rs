//! A small DXF code-pair reader for what the `dxf` crate does not give us:
//! HATCH entities (the crate skips them) and files the crate rejects because
//! stray pairs sit between sections (dxflib 2.0 writes `ENDSEC` in the middle
//! of its HEADER). Best effort: malformed data ends the scan, it never panics.

use std::collections::HashMap;

const BINARY_SENTINEL: &[u8] = b"AutoCAD Binary DXF\r\n\x1a\0";

#[derive(Debug, Clone, Copy)]
pub(crate) enum Val<'a> {
    Text(&'a [u8]),
    Num(f64),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Pair<'a> {
    pub code: i32,
    pub val: Val<'a>,
}

impl Pair<'_> {
    pub fn num(&self) -> Option<f64> {
        match self.val {
            Val::Num(n) => Some(n),
            Val::Text(t) => std::str::from_utf8(t).ok()?.trim().parse().ok(),
        }
    }

    pub fn text(&self) -> Option<&[u8]> {
        match self.val {
            Val::Text(t) => Some(t.trim_ascii()),
            Val::Num(_) => None,
        }
    }

    fn is(&self, code: i32, text: &str) -> bool {
        self.code == code && self.text().is_some_and(|t| t.eq_ignore_ascii_case(text.as_bytes()))
    }
}

/// Code pairs of an ASCII or binary DXF.
pub(crate) struct Pairs<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// `None` for ASCII; `Some(true)` when codes are two bytes (R13+).
    binary: Option<bool>,
}

impl<'a> Pairs<'a> {
    pub fn new(bytes: &'a [u8]) -> Pairs<'a> {
        if let Some(rest) = bytes.strip_prefix(BINARY_SENTINEL) {
            let two_byte_codes = rest.len() >= 2 && rest[0] == 0 && rest[1] == 0;
            Pairs {
                bytes,
                pos: BINARY_SENTINEL.len(),
                binary: Some(two_byte_codes),
            }
        } else {
            let pos = if bytes.starts_with(b"\xef\xbb\xbf") { 3 } else { 0 };
            Pairs {
                bytes,
                pos,
                binary: None,
            }
        }
    }

    fn line(&mut self) -> Option<&'a [u8]> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let rest = &self.bytes[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        self.pos += (end + 1).min(rest.len());
        let line = &rest[..end];
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn next_binary(&mut self, two_byte_codes: bool) -> Option<Pair<'a>> {
        let code = if two_byte_codes {
            i32::from(i16::from_le_bytes(self.take(2)?.try_into().ok()?))
        } else {
            match self.take(1)?[0] {
                255 => i32::from(i16::from_le_bytes(self.take(2)?.try_into().ok()?)),
                c => i32::from(c),
            }
        };
        let num = |b: &[u8]| -> Option<f64> {
            Some(match b.len() {
                1 => f64::from(b[0]),
                2 => f64::from(i16::from_le_bytes(b.try_into().ok()?)),
                4 => f64::from(i32::from_le_bytes(b.try_into().ok()?)),
                _ => i64::from_le_bytes(b.try_into().ok()?) as f64,
            })
        };
        let val = match value_kind(code)? {
            Kind::Text => {
                let rest = &self.bytes[self.pos..];
                let end = rest.iter().position(|&b| b == 0)?;
                self.pos += end + 1;
                Val::Text(&rest[..end])
            }
            Kind::Binary => {
                let len = usize::from(self.take(1)?[0]);
                Val::Text(self.take(len)?)
            }
            Kind::Double => Val::Num(f64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            Kind::Bool => Val::Num(num(self.take(if two_byte_codes { 1 } else { 2 })?)?),
            Kind::Short => Val::Num(num(self.take(2)?)?),
            Kind::Int => Val::Num(num(self.take(4)?)?),
            Kind::Long => Val::Num(num(self.take(8)?)?),
        };
        Some(Pair { code, val })
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = Pair<'a>;

    fn next(&mut self) -> Option<Pair<'a>> {
        match self.binary {
            Some(two_byte_codes) => self.next_binary(two_byte_codes),
            None => {
                let code = std::str::from_utf8(self.line()?).ok()?.trim().parse().ok()?;
                let value = self.line()?;
                Some(Pair {
                    code,
                    val: Val::Text(value),
                })
            }
        }
    }
}

enum Kind {
    Text,
    Binary,
    Double,
    Bool,
    Short,
    Int,
    Long,
}

/// Value types by group code, as the DXF reference (and the `dxf` crate) has them.
fn value_kind(code: i32) -> Option<Kind> {
    Some(match code {
        0..=9 | 100..=102 | 105 | 300..=309 | 320..=369 | 390..=399 | 410..=419 | 430..=439 | 470..=481 | 999 => {
            Kind::Text
        }
        1000..=1009 => Kind::Text,
        310..=319 => Kind::Binary,
        10..=59 | 110..=149 | 210..=239 | 460..=469 | 1010..=1059 => Kind::Double,
        60..=79 | 170..=179 | 270..=289 | 370..=389 | 400..=409 | 1060..=1070 => Kind::Short,
        90..=99 | 420..=429 | 440..=459 | 1071 => Kind::Int,
        160..=169 => Kind::Long,
        290..=299 => Kind::Bool,
        _ => return None,
    })
}

/// Decodes a name: UTF-8 when valid, else one byte per character (Latin-1,
/// which is what Windows-1252 is for almost every name).
pub(crate) fn decode(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

/// One edge of a HATCH boundary path, in the hatch's OCS.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Edge {
    Line([f64; 2], [f64; 2]),
    /// Vertices as (x, y, bulge).
    Polyline {
        vertices: Vec<[f64; 3]>,
        closed: bool,
    },
    /// Counter-clockwise from `start` to `end` degrees (clockwise edges are
    /// converted on reading).
    Arc {
        centre: [f64; 2],
        radius: f64,
        start: f64,
        end: f64,
    },
    /// Like `Arc`, angles in degrees measured on the ellipse, not parameters.
    Ellipse {
        centre: [f64; 2],
        major: [f64; 2],
        ratio: f64,
        start: f64,
        end: f64,
    },
    Spline {
        degree: usize,
        knots: Vec<f64>,
        control: Vec<[f64; 2]>,
        weights: Vec<f64>,
        fit: Vec<[f64; 2]>,
    },
}

#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Hatch {
    pub layer: String,
    pub in_paper_space: bool,
    pub visible: bool,
    pub solid: bool,
    pub elevation: f64,
    pub extrusion: [f64; 3],
    pub paths: Vec<Vec<Edge>>,
}

#[derive(Debug, Default)]
pub(crate) struct Hatches {
    pub model: Vec<Hatch>,
    /// By upper-cased block name.
    pub blocks: HashMap<String, Vec<Hatch>>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooMany(pub String);

/// Every HATCH of the ENTITIES and BLOCKS sections. At most `max_hatches`
/// hatches of at most `max_pairs` code pairs each.
pub(crate) fn hatches(bytes: &[u8], max_hatches: usize, max_pairs: usize) -> Result<Hatches, TooMany> {
    let mut out = Hatches::default();
    if !contains(bytes, b"HATCH") {
        return Ok(out);
    }
    #[derive(PartialEq)]
    enum Section {
        None,
        Blocks,
        Entities,
        Other,
    }
    let mut section = Section::None;
    let mut block: Option<String> = None;
    let mut count = 0usize;
    let mut pairs = Pairs::new(bytes).peekable();
    while let Some(pair) = pairs.next() {
        if pair.code != 0 {
            continue;
        }
        let Some(kind) = pair.text() else { continue };
        let kind = kind.to_ascii_uppercase();
        match kind.as_slice() {
            b"SECTION" => {
                section = match pairs.peek().filter(|p| p.code == 2).and_then(|p| p.text()) {
                    Some(b"BLOCKS") => Section::Blocks,
                    Some(b"ENTITIES") => Section::Entities,
                    _ => Section::Other,
                }
            }
            b"ENDSEC" => section = Section::None,
            b"BLOCK" if section == Section::Blocks => {
                block = None;
                while let Some(p) = pairs.next_if(|p| p.code != 0) {
                    if p.code == 2 && block.is_none() {
                        block = p.text().map(|t| decode(t).to_uppercase());
                    }
                }
            }
            b"ENDBLK" => block = None,
            b"HATCH" if section == Section::Entities || (section == Section::Blocks && block.is_some()) => {
                count += 1;
                if count > max_hatches {
                    return Err(TooMany(format!("more than {max_hatches} HATCH entities")));
                }
                let mut hatch = Hatch {
                    visible: true,
                    extrusion: [0.0, 0.0, 1.0],
                    ..Hatch::default()
                };
                let mut nums: Vec<(i32, f64)> = Vec::new();
                while let Some(p) = pairs.next_if(|p| p.code != 0) {
                    match p.code {
                        8 => hatch.layer = p.text().map(decode).unwrap_or_default(),
                        67 => hatch.in_paper_space = p.num() == Some(1.0),
                        60 => hatch.visible = p.num() != Some(1.0),
                        1000.. => {}
                        code if value_kind(code).is_some_and(|k| !matches!(k, Kind::Text | Kind::Binary)) => {
                            if nums.len() >= max_pairs {
                                return Err(TooMany(format!("a HATCH with more than {max_pairs} values")));
                            }
                            nums.push((code, p.num().unwrap_or(f64::NAN)));
                        }
                        _ => {}
                    }
                }
                parse_hatch(&nums, &mut hatch);
                match (&section, &block) {
                    (Section::Blocks, Some(name)) => out.blocks.entry(name.clone()).or_default().push(hatch),
                    _ => out.model.push(hatch),
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Numeric pairs of one HATCH read in order.
struct Cursor<'a> {
    nums: &'a [(i32, f64)],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<i32> {
        self.nums.get(self.at).map(|p| p.0)
    }

    /// The next value if its code is `code`.
    fn opt(&mut self, code: i32) -> Option<f64> {
        let (c, v) = *self.nums.get(self.at)?;
        (c == code).then(|| {
            self.at += 1;
            v
        })
    }

    fn xy(&mut self, x: i32) -> Option<[f64; 2]> {
        Some([self.opt(x)?, self.opt(x + 10)?])
    }

    fn count(&mut self, code: i32) -> Option<usize> {
        let n = self.opt(code)?;
        (n.is_finite() && n >= 0.0).then_some(n as usize)
    }
}

fn parse_hatch(nums: &[(i32, f64)], hatch: &mut Hatch) {
    let mut c = Cursor { nums, at: 0 };
    // Header values up to the path count.
    while let Some(code) = c.peek() {
        let v = nums[c.at].1;
        match code {
            30 => hatch.elevation = v,
            210 => hatch.extrusion[0] = v,
            220 => hatch.extrusion[1] = v,
            230 => hatch.extrusion[2] = v,
            70 => hatch.solid = v == 1.0,
            91 => break,
            _ => {}
        }
        c.at += 1;
    }
    let Some(paths) = c.count(91) else { return };
    for _ in 0..paths {
        // Skip what is left of the previous path (source-object counts).
        while let Some(code) = c.peek() {
            if code == 92 || matches!(code, 75..=78 | 98) {
                break;
            }
            c.at += 1;
        }
        let Some(flags) = c.opt(92) else { return };
        let path = if (flags as i64) & 2 != 0 {
            polyline_path(&mut c)
        } else {
            edge_path(&mut c)
        };
        match path {
            Some(p) if !p.is_empty() => hatch.paths.push(p),
            Some(_) => {}
            None => return,
        }
    }
}

fn polyline_path(c: &mut Cursor) -> Option<Vec<Edge>> {
    c.opt(72); // has bulges: they are read wherever they are
    let closed = c.opt(73).is_none_or(|v| v != 0.0);
    let n = c.count(93)?;
    let mut vertices = Vec::new();
    for _ in 0..n {
        let [x, y] = c.xy(10)?;
        vertices.push([x, y, c.opt(42).unwrap_or(0.0)]);
    }
    Some(vec![Edge::Polyline { vertices, closed }])
}

/// DXF stores clockwise HATCH arcs with complementary angles; as a point set
/// a clockwise arc from 360−s to 360−e is the counter-clockwise arc from
/// 360−e to 360−s.
fn ccw_angles(start: f64, end: f64, ccw: bool) -> (f64, f64) {
    if ccw {
        (start, end)
    } else {
        (360.0 - end, 360.0 - start)
    }
}

fn edge_path(c: &mut Cursor) -> Option<Vec<Edge>> {
    let n = c.count(93)?;
    let mut edges = Vec::new();
    for _ in 0..n {
        let kind = c.opt(72)?;
        let edge = match kind as i64 {
            1 => Edge::Line(c.xy(10)?, c.xy(11)?),
            2 => {
                let centre = c.xy(10)?;
                let radius = c.opt(40)?;
                let (s, e) = (c.opt(50)?, c.opt(51)?);
                let ccw = c.opt(73).is_none_or(|v| v != 0.0);
                let (start, end) = ccw_angles(s, e, ccw);
                Edge::Arc {
                    centre,
                    radius,
                    start,
                    end,
                }
            }
            3 => {
                let centre = c.xy(10)?;
                let major = c.xy(11)?;
                let ratio = c.opt(40)?;
                let (s, e) = (c.opt(50)?, c.opt(51)?);
                let ccw = c.opt(73).is_none_or(|v| v != 0.0);
                let (start, end) = ccw_angles(s, e, ccw);
                Edge::Ellipse {
                    centre,
                    major,
                    ratio,
                    start,
                    end,
                }
            }
            4 => {
                let degree = c.opt(94)?.max(1.0) as usize;
                let rational = c.opt(73).is_some_and(|v| v != 0.0);
                c.opt(74);
                let n_knots = c.count(95)?;
                let n_ctrl = c.count(96)?;
                let mut knots = Vec::new();
                for _ in 0..n_knots {
                    knots.push(c.opt(40)?);
                }
                let (mut control, mut weights) = (Vec::new(), Vec::new());
                for _ in 0..n_ctrl {
                    control.push(c.xy(10)?);
                    if rational {
                        weights.push(c.opt(42).unwrap_or(1.0));
                    }
                }
                let mut fit = Vec::new();
                if c.peek() == Some(97) && c.nums.get(c.at + 1).is_some_and(|p| p.0 == 11) {
                    let n_fit = c.count(97)?;
                    for _ in 0..n_fit {
                        fit.push(c.xy(11)?);
                    }
                } else if c.peek() == Some(97) && c.nums.get(c.at + 1).is_some_and(|p| matches!(p.0, 12 | 13 | 72)) {
                    c.opt(97); // a fit-point count of zero
                }
                c.xy(12);
                c.xy(13);
                Edge::Spline {
                    degree,
                    knots,
                    control,
                    weights,
                    fit,
                }
            }
            _ => return None,
        };
        edges.push(edge);
    }
    Some(edges)
}

/// dxflib 2.0 ends the HEADER early and writes the rest of its variables
/// outside any section, which the `dxf` crate rejects. Returns the ASCII file
/// without pairs that sit outside sections, or `None` when there are none
/// (or the file is binary).
pub(crate) fn without_stray_pairs(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.starts_with(BINARY_SENTINEL) {
        return None;
    }
    let mut pairs = Pairs::new(bytes);
    let mut out = Vec::with_capacity(bytes.len());
    let mut in_section = false;
    let mut dropped = false;
    loop {
        let start = pairs.pos;
        let Some(pair) = pairs.next() else { break };
        let keep = if pair.is(0, "SECTION") {
            in_section = true;
            true
        } else if pair.is(0, "ENDSEC") {
            std::mem::replace(&mut in_section, false)
        } else {
            in_section || pair.is(0, "EOF") || pair.code == 999
        };
        if keep {
            out.extend_from_slice(&bytes[start..pairs.pos]);
            if !out.ends_with(b"\n") {
                out.push(b'\n');
            }
        } else {
            dropped = true;
        }
    }
    dropped.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_pairs_are_read_with_bom_and_crlf() {
        let text = b"\xef\xbb\xbf  0\r\nSECTION\r\n  2\r\nENTITIES\r\n 10\r\n1.5\r\n";
        let pairs: Vec<_> = Pairs::new(text).collect();
        assert_eq!(pairs.len(), 3);
        assert!(pairs[0].is(0, "SECTION"));
        assert_eq!(pairs[2].code, 10);
        assert_eq!(pairs[2].num(), Some(1.5));
    }

    #[test]
    fn stray_pairs_between_sections_are_dropped() {
        let text = b"999\ndxflib\n0\nSECTION\n2\nHEADER\n0\nENDSEC\n9\n$DIMASZ\n40\n2.5\n0\nSECTION\n2\nENTITIES\n0\nENDSEC\n0\nEOF\n";
        let fixed = without_stray_pairs(text).unwrap();
        let fixed = String::from_utf8(fixed).unwrap();
        assert!(!fixed.contains("DIMASZ"), "{fixed}");
        assert!(fixed.contains("ENTITIES") && fixed.ends_with("EOF\n"));
        assert_eq!(without_stray_pairs(fixed.as_bytes()), None);
    }

    #[test]
    fn hatch_paths_are_read_in_blocks_and_entities() {
        let hatch = "0\nHATCH\n8\nL1\n10\n0\n20\n0\n30\n5\n210\n0\n220\n0\n230\n1\n2\nSOLID\n70\n1\n71\n0\n91\n2\n\
                     92\n2\n72\n1\n73\n1\n93\n3\n10\n0\n20\n0\n42\n0.5\n10\n1\n20\n0\n42\n0\n10\n1\n20\n1\n42\n0\n97\n0\n\
                     92\n1\n93\n2\n72\n1\n10\n0\n20\n0\n11\n1\n21\n0\n72\n2\n10\n0\n20\n0\n40\n1\n50\n10\n51\n80\n73\n0\n\
                     97\n1\n330\nAB\n75\n0\n76\n1\n98\n0\n";
        let text = format!(
            "0\nSECTION\n2\nBLOCKS\n0\nBLOCK\n2\nbolt\n10\n0\n{hatch}0\nENDBLK\n0\nENDSEC\n0\nSECTION\n2\nENTITIES\n{hatch}0\nENDSEC\n0\nEOF\n"
        );
        let found = hatches(text.as_bytes(), 10, 1000).unwrap();
        assert_eq!(found.model.len(), 1);
        let h = &found.blocks["BOLT"][0];
        assert_eq!(h, &found.model[0]);
        assert!(h.solid && h.elevation == 5.0 && h.layer == "L1");
        assert_eq!(h.paths.len(), 2);
        assert_eq!(
            h.paths[0],
            vec![Edge::Polyline {
                vertices: vec![[0.0, 0.0, 0.5], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]],
                closed: true
            }]
        );
        assert_eq!(
            h.paths[1][1],
            Edge::Arc {
                centre: [0.0, 0.0],
                radius: 1.0,
                start: 280.0,
                end: 350.0
            }
        );
        assert!(matches!(hatches(text.as_bytes(), 1, 1000), Err(TooMany(_))));
        assert!(matches!(hatches(text.as_bytes(), 10, 5), Err(TooMany(_))));
        // The same pairs in binary, with R13+ two-byte codes and R12 one-byte codes.
        for two_byte_codes in [true, false] {
            let bin = to_binary(&text, two_byte_codes);
            let again = hatches(&bin, 10, 1000).unwrap();
            assert_eq!(again.model, found.model);
            assert_eq!(again.blocks, found.blocks);
        }
    }

    /// Binary DXF of an ASCII one, by the value types of the group codes.
    fn to_binary(ascii: &str, two_byte_codes: bool) -> Vec<u8> {
        let mut out = BINARY_SENTINEL.to_vec();
        let lines: Vec<&str> = ascii.lines().collect();
        for pair in lines.chunks(2) {
            let code: i16 = pair[0].trim().parse().unwrap();
            if two_byte_codes {
                out.extend(code.to_le_bytes());
            } else if code < 255 {
                out.push(code as u8);
            } else {
                out.push(255);
                out.extend(code.to_le_bytes());
            }
            let v = pair[1];
            match value_kind(i32::from(code)).unwrap() {
                Kind::Text | Kind::Binary => {
                    out.extend(v.as_bytes());
                    out.push(0);
                }
                Kind::Double => out.extend(v.parse::<f64>().unwrap().to_le_bytes()),
                Kind::Bool if two_byte_codes => out.push(v.parse().unwrap()),
                Kind::Bool | Kind::Short => out.extend(v.parse::<i16>().unwrap().to_le_bytes()),
                Kind::Int => out.extend(v.parse::<i32>().unwrap().to_le_bytes()),
                Kind::Long => out.extend(v.parse::<i64>().unwrap().to_le_bytes()),
            }
        }
        out
    }
}
