//! The PostgreSQL gateway's standing against its targets, for RESULTS.md.
//!
//! `bench/pg.sh` measures the gateway (its own command: it needs PostgreSQL,
//! PgBouncer and pgbench); its analysed results live in `bench/POSTGRES.md`.
//! RESULTS.md repeats that file's target table and its explanation of what
//! stands in the way, so one file answers for every target.

/// Sections of POSTGRES.md copied into RESULTS.md, in this order.
const SECTIONS: [&str; 2] = [
    "## Against the targets",
    "## Profile: where the appliance's CPU goes",
];

/// The sections of `postgres_md` named in [`SECTIONS`], each with its heading
/// demoted one level; `None` when none is present.
pub fn excerpt(postgres_md: &str) -> Option<String> {
    let mut out = String::new();
    for heading in SECTIONS {
        let Some(start) = postgres_md
            .match_indices(heading)
            .map(|(i, _)| i)
            .find(|&i| i == 0 || postgres_md.as_bytes()[i - 1] == b'\n')
        else {
            continue;
        };
        let body_start = start + heading.len();
        let end = postgres_md[body_start..]
            .find("\n## ")
            .map_or(postgres_md.len(), |i| body_start + i + 1);
        out.push('#');
        out.push_str(postgres_md[start..end].trim_end());
        out.push_str("\n\n");
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_the_named_sections_with_demoted_headings() {
        let md = "# PostgreSQL\n\nintro\n\n## Against the targets\n\n| a | b |\n\n\
                  ## Heap allocations\n\nskip me\n\n\
                  ## Profile: where the appliance's CPU goes\n\nthe audit record\n";
        let got = excerpt(md).unwrap();
        assert_eq!(
            got,
            "### Against the targets\n\n| a | b |\n\n\
             ### Profile: where the appliance's CPU goes\n\nthe audit record\n\n"
        );
        assert!(!got.contains("skip me"));
    }

    #[test]
    fn nothing_to_copy() {
        assert_eq!(excerpt("# other\n\ntext\n"), None);
    }
}
