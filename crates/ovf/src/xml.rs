//! A small namespace-resolved element tree built from quick-xml events, with limits: the
//! descriptor model reads from this tree, never from raw XML.
//!
//! DTDs are refused (OVF descriptors have none; a DTD is how entity-expansion attacks start),
//! only the five predefined entities and character references are resolved, and element
//! count, depth and text size are bounded before anything is stored.

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

use crate::error::{OvfError, Result};

/// Largest descriptor read: vSphere's descriptors of multi-VM vApps are tens of KiB; 8 MiB
/// leaves room for long EULAs and product sections without letting a hostile file exhaust memory.
pub const MAX_DESCRIPTOR_BYTES: u64 = 8 << 20;
/// Deepest element nesting: real descriptors are under 10 deep (VirtualBox's embedded machine
/// config is the deepest, about 8).
pub const MAX_DEPTH: usize = 64;
/// Most elements in one descriptor: a 100-disk VM is under 5,000.
pub const MAX_ELEMENTS: usize = 200_000;

/// One element: resolved namespace URI ("" for none), local name, attributes, children and
/// the concatenated text directly inside it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub ns: String,
    pub name: String,
    pub attrs: Vec<Attr>,
    pub children: Vec<Element>,
    pub text: String,
}

/// An attribute with its resolved namespace ("" for an unprefixed attribute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ns: String,
    pub name: String,
    pub value: String,
}

impl Element {
    /// Children with this local name (any namespace).
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The first child with this local name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The trimmed text of the first child with this local name.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }

    /// The attribute with this local name in namespace `ns`, else the unqualified one (older
    /// writers leave `ovf:` off some attributes).
    pub fn attr(&self, ns: &[&str], name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.name == name && ns.contains(&a.ns.as_str()))
            .or_else(|| {
                self.attrs
                    .iter()
                    .find(|a| a.name == name && a.ns.is_empty())
            })
            .map(|a| a.value.as_str())
    }

    /// The attribute with this local name in any namespace.
    pub fn attr_any(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.value.as_str())
    }
}

/// Parses `bytes` (UTF-8) into the root element; `file` names it in errors.
pub fn parse(bytes: &[u8], file: &str) -> Result<Element> {
    if bytes.len() as u64 > MAX_DESCRIPTOR_BYTES {
        return Err(OvfError::Limit {
            what: file.to_string(),
            limit: "MAX_DESCRIPTOR_BYTES",
            value: bytes.len() as u64,
            max: MAX_DESCRIPTOR_BYTES,
        });
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if std::str::from_utf8(bytes).is_err() {
        return Err(xml_err(file, 0, "not UTF-8 (OVF descriptors are UTF-8)"));
    }
    let mut reader = NsReader::from_reader(bytes);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut elements = 0usize;
    loop {
        let offset = reader.buffer_position();
        let (ns, event) = reader
            .read_resolved_event()
            .map_err(|e| xml_err(file, offset, &e.to_string()))?;
        let ns = resolved(&ns, file, offset)?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                elements += 1;
                if elements > MAX_ELEMENTS {
                    return Err(OvfError::Limit {
                        what: file.to_string(),
                        limit: "MAX_ELEMENTS",
                        value: elements as u64,
                        max: MAX_ELEMENTS as u64,
                    });
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(OvfError::Limit {
                        what: file.to_string(),
                        limit: "MAX_DEPTH",
                        value: stack.len() as u64 + 1,
                        max: MAX_DEPTH as u64,
                    });
                }
                if root.is_some() {
                    return Err(xml_err(file, offset, "content after the root element"));
                }
                let name = utf8(e.local_name().as_ref(), file, offset)?;
                let mut attrs = Vec::new();
                for attr in e.attributes() {
                    let attr = attr.map_err(|err| xml_err(file, offset, &err.to_string()))?;
                    let key = attr.key;
                    if key.as_ref() == b"xmlns" || key.as_ref().starts_with(b"xmlns:") {
                        continue;
                    }
                    let (ans, local) = reader.resolve_attribute(key);
                    let ans = resolved(&ans, file, offset)?;
                    let value = attr
                        .unescape_value()
                        .map_err(|err| xml_err(file, offset, &err.to_string()))?;
                    attrs.push(Attr {
                        ns: ans,
                        name: utf8(local.as_ref(), file, offset)?,
                        value: value.into_owned(),
                    });
                }
                let element = Element {
                    ns,
                    name,
                    attrs,
                    ..Element::default()
                };
                if matches!(event, Event::Empty(_)) {
                    close(element, &mut stack, &mut root);
                } else {
                    stack.push(element);
                }
            }
            Event::End(_) => {
                let element = stack
                    .pop()
                    .ok_or_else(|| xml_err(file, offset, "end tag without a start"))?;
                close(element, &mut stack, &mut root);
            }
            Event::Text(t) => {
                let text = t
                    .xml_content()
                    .map_err(|err| xml_err(file, offset, &err.to_string()))?;
                push_text(&mut stack, &text, file, offset)?;
            }
            Event::CData(t) => {
                let text = t
                    .decode()
                    .map_err(|err| xml_err(file, offset, &err.to_string()))?;
                push_text(&mut stack, &text, file, offset)?;
            }
            Event::GeneralRef(r) => {
                let text = if r.is_char_ref() {
                    let c = r
                        .resolve_char_ref()
                        .map_err(|err| xml_err(file, offset, &err.to_string()))?
                        .ok_or_else(|| xml_err(file, offset, "bad character reference"))?;
                    c.to_string()
                } else {
                    let name = r
                        .decode()
                        .map_err(|err| xml_err(file, offset, &err.to_string()))?;
                    resolve_predefined_entity(&name)
                        .ok_or_else(|| xml_err(file, offset, &format!("unknown entity &{name};")))?
                        .to_string()
                };
                push_text(&mut stack, &text, file, offset)?;
            }
            Event::DocType(_) => {
                return Err(xml_err(
                    file,
                    offset,
                    "a DOCTYPE is not allowed in an OVF descriptor",
                ))
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(xml_err(
            file,
            bytes.len() as u64,
            "the document ends inside an element",
        ));
    }
    root.ok_or_else(|| xml_err(file, 0, "no root element"))
}

fn close(element: Element, stack: &mut [Element], root: &mut Option<Element>) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None => *root = Some(element),
    }
}

fn push_text(stack: &mut [Element], text: &str, file: &str, offset: u64) -> Result<()> {
    match stack.last_mut() {
        Some(top) => {
            top.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err(xml_err(file, offset, "text outside the root element")),
    }
}

fn resolved(ns: &ResolveResult<'_>, file: &str, offset: u64) -> Result<String> {
    match ns {
        ResolveResult::Bound(n) => utf8(n.as_ref(), file, offset),
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Unknown(p) => Err(xml_err(
            file,
            offset,
            &format!("undeclared namespace prefix {}", String::from_utf8_lossy(p)),
        )),
    }
}

fn utf8(bytes: &[u8], file: &str, offset: u64) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| xml_err(file, offset, "name is not UTF-8"))
}

fn xml_err(file: &str, offset: u64, problem: &str) -> OvfError {
    OvfError::Xml {
        file: file.to_string(),
        offset,
        problem: problem.to_string(),
    }
}

/// Escapes text for element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_resolve_and_entities_decode() {
        let doc = br#"<?xml version="1.0"?><a:E xmlns:a="urn:a" xmlns="urn:d" a:x="1&amp;2"><C>t&lt;&#65;</C><![CDATA[z]]></a:E>"#;
        let root = parse(doc, "t").unwrap();
        assert_eq!(root.ns, "urn:a");
        assert_eq!(root.attr(&["urn:a"], "x"), Some("1&2"));
        assert_eq!(root.child("C").unwrap().ns, "urn:d");
        assert_eq!(root.child_text("C"), Some("t<A"));
        assert_eq!(root.text, "z");
    }

    #[test]
    fn doctype_and_unknown_entities_are_refused() {
        let doc = br#"<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>"#;
        assert!(matches!(parse(doc, "t"), Err(OvfError::Xml { .. })));
        assert!(matches!(
            parse(b"<x>&a;</x>", "t"),
            Err(OvfError::Xml { .. })
        ));
    }

    #[test]
    fn depth_limit_is_enforced() {
        let mut doc = String::new();
        for _ in 0..=MAX_DEPTH {
            doc.push_str("<a>");
        }
        assert!(matches!(
            parse(doc.as_bytes(), "t"),
            Err(OvfError::Limit {
                limit: "MAX_DEPTH",
                ..
            })
        ));
    }

    #[test]
    fn unclosed_and_mismatched_documents_are_errors() {
        assert!(parse(b"<a><b></a>", "t").is_err());
        assert!(parse(b"<a>", "t").is_err());
        assert!(parse(b"", "t").is_err());
        assert!(parse(b"<a/><b/>", "t").is_err());
        assert!(parse(b"<p:a/>", "t").is_err());
    }
}
