//! pull: `ferry pull` of a multi-layer image from a local registry (Debian's
//! docker-registry) against `skopeo copy` of the same image to an OCI
//! directory, taking turns. ferry also unpacks every layer into its store;
//! skopeo only writes the blobs.

use std::time::Instant;

use ferry_integration::{
    World, check,
    image::{self, Layer},
    registry::{self, Registry},
};
use serde_json::json;

use super::{
    BenchArgs,
    report::{Chart, Section, Table},
};
use crate::step;

fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

/// `skopeo copy` of the registry's image `name` to `dest`.
fn skopeo_copy(world: &World, name: &str, dest: &str) {
    check(&mut world.in_host(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{name}"),
            dest,
        ],
    ));
}

pub fn run(args: &BenchArgs) -> anyhow::Result<Section> {
    let rounds = args.reps.max(1);
    step(&format!(
        "bench pull: ferry pull against skopeo copy, {rounds} rounds"
    ));
    let world = World::new();
    let registry = Registry::start(&world);
    // Four layers from the host's files, gzip-compressed as registries
    // serve them: a shell, Python's standard library, Perl's, and a page.
    let layers = vec![
        Layer::new().busybox(&["sh", "cat"]).finish(),
        Layer::new()
            .dir("usr")
            .dir("usr/lib")
            .tree(
                "usr/lib/python3.11",
                std::path::Path::new("/usr/lib/python3.11"),
            )
            .finish(),
        Layer::new()
            .dir("usr")
            .dir("usr/share")
            .tree("usr/share/perl", std::path::Path::new("/usr/share/perl"))
            .finish(),
        Layer::new()
            .dir("www")
            .file("www/index.html", 0o644, b"pulled\n")
            .finish(),
    ];
    let unpacked: usize = layers.iter().map(Vec::len).sum();
    let config = image::config(&layers, json!({ "Cmd": ["sh"] }));
    let archive = world.dir.join("pull-bench.tar");
    image::oci_archive(&archive, "bench/pull:1", &layers, &config, None);
    registry.push(&world, &archive, "bench/pull:1");
    let name = format!("{}/bench/pull:1", registry::ADDR);

    let (mut ferry, mut skopeo, mut unpacking) = (Vec::new(), Vec::new(), Vec::new());
    let mut raw = Vec::new();
    for round in 0..rounds {
        let t = Instant::now();
        world.ferry_ok(&["pull", "-q", &name]);
        let ferry_s = t.elapsed().as_secs_f64();
        world.ferry_ok(&["rmi", &name]);
        let dest = world.dir.join(format!("skopeo-{round}"));
        let t = Instant::now();
        skopeo_copy(&world, &name, &format!("oci:{}:pull", dest.display()));
        let skopeo_s = t.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&dest);
        // The same into a private containers-storage (podman's store):
        // skopeo unpacks the layers there, as ferry does.
        let store = world.dir.join(format!("storage-{round}"));
        let t = Instant::now();
        skopeo_copy(
            &world,
            &name,
            &format!(
                "containers-storage:[overlay@{}/root+{}/run]bench/pull:1",
                store.display(),
                store.display()
            ),
        );
        let unpacking_s = t.elapsed().as_secs_f64();
        ferry_integration::unmount_below(&store);
        let _ = std::fs::remove_dir_all(&store);
        ferry.push(ferry_s);
        skopeo.push(skopeo_s);
        unpacking.push(unpacking_s);
        raw.push(json!({
            "round": round, "ferry_s": ferry_s, "skopeo_s": skopeo_s,
            "skopeo_storage_s": unpacking_s,
        }));
    }
    let (f, s, u) = (median(&ferry), median(&skopeo), median(&unpacking));
    let mut table = Table::new(
        format!(
            "pull: 4 layers, {:.0} MB unpacked, from a registry on loopback (median of {rounds})",
            unpacked as f64 / 1e6
        ),
        &[
            "tool",
            "seconds",
            "skopeo oci: / tool",
            "skopeo storage / tool",
        ],
    );
    for (tool, secs) in [
        ("ferry pull (download + unpack)", f),
        ("skopeo copy to oci: (download)", s),
        ("skopeo copy to containers-storage (download + unpack)", u),
    ] {
        let ratio = |base: f64| if secs > 0.0 { base / secs } else { 0.0 };
        table.row(vec![
            tool.to_owned(),
            format!("{secs:.2}"),
            format!("{:.2}x", ratio(s)),
            format!("{:.2}x", ratio(u)),
        ]);
    }
    Ok(Section {
        scenario: "pull".into(),
        method: format!(
            "A 4-layer image (busybox, /usr/lib/python3.11, /usr/share/perl, a page; gzip layers) \
             pushed with skopeo to Debian's docker-registry on 127.0.0.1:5000 in a sandbox \
             namespace, then pulled {rounds} times, taking turns: `ferry pull` (ferryd downloads \
             3 layers at a time, verifies and unpacks each into its store while it arrives; the \
             image is removed after each round), `skopeo copy docker://... oci:DIR` (writes the \
             blobs only) and `skopeo copy docker://... containers-storage:[overlay@...]` (a private \
             podman store: skopeo unpacks the layers too, the like-for-like peer). A ratio above 1 \
             means faster than that skopeo."
        ),
        tables: vec![table],
        charts: vec![Chart {
            file: "pull".into(),
            title: "pull: seconds for the same image".into(),
            unit: "s".into(),
            groups: vec![(
                "median".to_owned(),
                vec![
                    ("ferry".to_owned(), f),
                    ("skopeo oci:".to_owned(), s),
                    ("skopeo storage".to_owned(), u),
                ],
            )],
        }],
        samples: json!(raw),
    })
}
