//! The records of a DNS answer that belong to its question: the CNAME chain that starts
//! at the question's name, and the addresses of the name where that chain ends
//! (RFC 1034 section 3.6.2 and 4.3.2: an answer follows CNAMEs from the name asked).
//!
//! An upstream (a forwarding resolver that passes records through, a poisoned cache, a
//! hostile server for an allowed zone) can put records of other names into an answer.
//! Served to the job, they carried data into the sandbox (CNAMEs between names of the
//! attacker's choosing) and taught its resolver wrong name-to-address pairs; used by the
//! proxy, they made it dial an address that belonged to another name, and the log then
//! gave the allowed name that address (found by an attack run). Both the DNS filter and
//! the proxy's resolver now keep only what [`on_chain`] keeps.

use hickory_proto::rr::{Name, RData, Record, RecordType};

/// The most CNAME links followed from the question's name.
pub const MAX_CHAIN: usize = 16;

/// What [`on_chain`] keeps of an answer section.
#[derive(Debug)]
pub struct Chain<'a> {
    /// The CNAMEs of the chain in order, then the address records of its last name.
    pub records: Vec<&'a Record>,
    /// How many records of the section were left out.
    pub stray: usize,
}

/// The records of `answers` on the chain from `name`: each CNAME whose owner is the
/// current name (followed to its target, at most [`MAX_CHAIN`] links, never twice), then
/// the records of type `rtype` (A or AAAA) owned by the name the chain ends at; nothing
/// at all when that name has none. Names compare without regard to case (RFC 4343).
pub fn on_chain<'a>(answers: &'a [Record], name: &Name, rtype: RecordType) -> Chain<'a> {
    let mut records: Vec<&Record> = Vec::new();
    let mut current = name.clone();
    for _ in 0..MAX_CHAIN {
        let link = answers.iter().find(|r| {
            r.record_type() == RecordType::CNAME
                && r.name() == &current
                && !records.iter().any(|kept| std::ptr::eq(*kept, *r))
        });
        let Some(link) = link else { break };
        let RData::CNAME(target) = link.data() else {
            break;
        };
        current = target.0.clone();
        records.push(link);
    }
    let before = records.len();
    records.extend(
        answers
            .iter()
            .filter(|r| r.record_type() == rtype && r.name() == &current),
    );
    if records.len() == before {
        // A chain that leads to no address carries nothing but names of the upstream's
        // choosing (DESIGN.md 6: only the CNAMEs that lead to addresses are served).
        records.clear();
    }
    Chain {
        stray: answers.len() - records.len(),
        records,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, CNAME, TXT};
    use std::net::Ipv4Addr;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn a(owner: &str, ip: [u8; 4]) -> Record {
        Record::from_rdata(name(owner), 60, RData::A(A(Ipv4Addr::from(ip))))
    }

    fn cname(owner: &str, target: &str) -> Record {
        Record::from_rdata(name(owner), 60, RData::CNAME(CNAME(name(target))))
    }

    fn owners(chain: &Chain<'_>) -> Vec<String> {
        chain.records.iter().map(|r| r.name().to_ascii()).collect()
    }

    /// An answer for `tx.allowed.test` that also carried CNAMEs between names of the
    /// upstream's choosing, an address of another name and a TXT record.
    #[test]
    fn only_the_questions_chain_is_kept() {
        let answers = vec![
            cname("o0.smuggle.test.", "chunk0.smuggle.test."),
            a("tx.allowed.test.", [198, 51, 100, 10]),
            a("stray.evil.test.", [203, 0, 113, 10]),
            Record::from_rdata(
                name("tx.allowed.test."),
                60,
                RData::TXT(TXT::new(vec!["data".into()])),
            ),
        ];
        let chain = on_chain(&answers, &name("TX.Allowed.Test."), RecordType::A);
        assert_eq!(owners(&chain), ["tx.allowed.test."]);
        assert_eq!(chain.stray, 3);
    }

    #[test]
    fn a_chain_is_followed_in_any_order_and_only_its_end_gives_addresses() {
        let answers = vec![
            a("end.cdn.test.", [198, 51, 100, 20]),
            cname("mid.cdn.test.", "end.cdn.test."),
            a("mid.cdn.test.", [203, 0, 113, 10]),
            cname("www.allowed.test.", "mid.cdn.test."),
        ];
        let chain = on_chain(&answers, &name("www.allowed.test."), RecordType::A);
        assert_eq!(
            owners(&chain),
            ["www.allowed.test.", "mid.cdn.test.", "end.cdn.test."]
        );
        assert_eq!(chain.stray, 1);
        // Only the asked type, and a chain without it is not served at all.
        let chain = on_chain(&answers, &name("www.allowed.test."), RecordType::AAAA);
        assert!(chain.records.is_empty());
        assert_eq!(chain.stray, answers.len());
    }

    #[test]
    fn loops_and_long_chains_end_without_an_answer() {
        let looped = vec![cname("a.test.", "b.test."), cname("b.test.", "a.test.")];
        let chain = on_chain(&looped, &name("a.test."), RecordType::A);
        assert!(chain.records.is_empty());
        assert_eq!(chain.stray, 2);
        let long: Vec<Record> = (0..40)
            .map(|i| cname(&format!("n{i}.test."), &format!("n{}.test.", i + 1)))
            .chain(std::iter::once(a("n40.test.", [198, 51, 100, 1])))
            .collect();
        // Beyond MAX_CHAIN links the end is never reached: nothing is served.
        assert!(on_chain(&long, &name("n0.test."), RecordType::A)
            .records
            .is_empty());
        // Ten links are followed to their address.
        let chain = on_chain(&long[30..], &name("n30.test."), RecordType::A);
        assert_eq!(chain.records.len(), 11);
        assert_eq!(chain.stray, 0);
    }

    /// A CNAME with nothing behind it carried a name of the upstream's choosing to the
    /// job (found by an attack run).
    #[test]
    fn a_dangling_cname_is_not_served() {
        let answers = vec![cname("dangle.allowed.test.", "data-here.smuggle.test.")];
        let chain = on_chain(&answers, &name("dangle.allowed.test."), RecordType::A);
        assert!(chain.records.is_empty());
        assert_eq!(chain.stray, 1);
    }
}
