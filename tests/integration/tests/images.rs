//! Images: `ferry load` of both archive formats, `ferry run IMAGE` with the
//! image's configuration, whiteouts, digests that do not match, and what is
//! left after removal. The images are built by the tests' own code
//! (`ferry_integration::image`) from the host's static busybox.

use std::{fs::File, path::Path, process::Command};

use ferry_integration::{
    CLIENT_IP, HOST_UPLINK_IP, World, bin_dir,
    image::{self, Layer},
    output,
    registry::{self, Registry},
};
use serde_json::json;

const APPLETS: &[&str] = &[
    "sh", "httpd", "ls", "cat", "echo", "id", "pwd", "sleep", "true", "env",
];

/// Two layers: busybox with a web root, then one that removes `/bin/true`,
/// replaces `/data` (opaque) and changes the page.
fn web_layers() -> Vec<Vec<u8>> {
    let base = Layer::new()
        .busybox(APPLETS)
        .dir("data")
        .file("data/old", 0o644, b"old\n")
        .finish();
    let top = Layer::new()
        .dir("bin")
        .whiteout("bin", "true")
        .dir("data")
        .opaque("data")
        .file("data/new", 0o644, b"new\n")
        .dir("www")
        .file("www/index.html", 0o644, b"hello from the top layer\n")
        .finish();
    vec![base, top]
}

fn web_config(layers: &[Vec<u8>]) -> Vec<u8> {
    image::config(
        layers,
        json!({
            "Cmd": ["httpd", "-f", "-p", "80", "-h", "/www"],
            "Env": ["PATH=/bin", "GREETING=hello"],
            "WorkingDir": "/www",
            "ExposedPorts": { "80/tcp": {} },
            "StopSignal": "SIGINT",
        }),
    )
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `ferry load` with the archive on standard input.
fn load_stdin(world: &World, archive: &Path) -> std::process::Output {
    output(
        Command::new(bin_dir().join("ferry"))
            .arg("-H")
            .arg(&world.socket)
            .arg("load")
            .stdin(File::open(archive).expect("archive")),
    )
}

fn store_entries(world: &World, dir: &str) -> Vec<String> {
    let path = world.dir.join("state/images").join(dir);
    let mut names: Vec<String> = std::fs::read_dir(&path)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_loaded_image_runs_with_its_config_and_publishes_what_it_exposes() {
    let world = World::new();
    let layers = web_layers();
    let config = web_config(&layers);
    let archive = world.dir.join("web.tar");
    image::docker_archive(&archive, &["web:1"], &layers, &config);
    let archive_arg = archive.display().to_string();
    let out = world.ferry_ok(&["load", "-i", &archive_arg]);
    assert_eq!(out.trim(), "Loaded image: web:1");
    let id = image::digest(&config);
    let images = world.ferry_ok(&["images"]);
    assert!(
        images.contains("web") && images.contains(&id[7..19]),
        "{images}"
    );

    // -P publishes the exposed port; the config's command, working directory
    // and environment apply; the client is seen with its own address.
    world.ferry_ok(&["run", "-d", "--name", "web", "-P", "web:1"]);
    let port = world.ferry_ok(&["port", "web"]);
    let host_port: u16 = port
        .trim()
        .strip_prefix("80/tcp -> 0.0.0.0:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("80/tcp not published: {port}"));
    let base = format!("http://{HOST_UPLINK_IP}:{host_port}");
    assert_eq!(
        world.curl_eventually(&format!("{base}/")),
        "hello from the top layer"
    );
    assert_eq!(
        world.curl_eventually(&format!("{base}/cgi-bin/peer")),
        format!("peer [::ffff:{CLIENT_IP}]")
    );
    let pwd_env = world.ferry_ok(&["exec", "web", "sh", "-c", "pwd; echo $GREETING $HOME"]);
    assert_eq!(pwd_env, "/www\nhello /root\n");
    let inspect = world.inspect("web");
    assert_eq!(inspect["Config"]["Image"], "web:1");
    assert_eq!(inspect["Config"]["StopSignal"], "SIGINT");

    // Whiteouts: /bin/true is gone, /data has only the top layer's file.
    let listing = world.ferry_ok(&[
        "run",
        "--rm",
        "web:1",
        "sh",
        "-c",
        "ls /data; [ -e /bin/true ] || echo gone",
    ]);
    assert_eq!(listing, "new\ngone\n", "whiteouts not applied");
    let out = world.ferry(&["run", "--rm", "web:1", "true"]);
    assert!(!out.status.success(), "a whited-out command ran");
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));

    // --user, --entrypoint, -e over the image's Env.
    let ids = world.ferry_ok(&["run", "--rm", "-u", "www", "web:1", "id"]);
    assert!(ids.starts_with("uid=33(www) gid=33(www)"), "{ids}");
    let echoed = world.ferry_ok(&[
        "run",
        "--rm",
        "-e",
        "GREETING=bye",
        "--entrypoint",
        "/bin/sh",
        "web:1",
        "-c",
        "echo $GREETING",
    ]);
    assert_eq!(echoed, "bye\n");

    // A container without --name gets adjective_noun.
    let cid = world.ferry_ok(&["run", "-d", "web:1", "sleep", "30"]);
    let named = world.inspect(cid.trim());
    let name = named["Name"].as_str().expect("Name");
    assert!(
        name.split_once('_')
            .is_some_and(|(a, n)| !a.is_empty() && !n.is_empty()),
        "{name}"
    );

    // Another name; removing one name only untags; an image in use stays.
    world.ferry_ok(&["tag", "web:1", "localhost:5000/web:latest"]);
    let untag = world.ferry_ok(&["rmi", "localhost:5000/web"]);
    assert_eq!(untag.trim(), "Untagged: localhost:5000/web:latest");
    let refused = world.ferry(&["rmi", "web:1"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("container web uses image")
            || stderr(&refused).contains(&format!("container {name} uses image")),
        "{}",
        stderr(&refused)
    );
    // `stop` sends the image's StopSignal (SIGINT), which this workload
    // traps; SIGTERM it would ignore (PID 1 without a handler).
    world.ferry_ok(&[
        "run",
        "-d",
        "--name",
        "trapper",
        "web:1",
        "sh",
        "-c",
        "trap 'exit 7' INT; while :; do sleep 0.1; done",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    world.ferry_ok(&["stop", "-t", "20", "trapper"]);
    assert_eq!(world.inspect("trapper")["State"]["ExitCode"], 7);
    world.ferry_ok(&["rm", "-f", "web", name, "trapper"]);
    // Saved, removed, loaded back: the same image.
    let saved = world.dir.join("saved.tar");
    let saved_arg = saved.display().to_string();
    world.ferry_ok(&["save", "-o", &saved_arg, "web:1"]);
    let removed = world.ferry_ok(&["rmi", "web:1"]);
    assert!(removed.contains("Untagged: web:1"), "{removed}");
    assert!(removed.contains(&format!("Deleted: {id}")), "{removed}");
    assert_eq!(world.ferry_ok(&["images", "-q"]), "");
    assert!(store_entries(&world, "layers").is_empty());
    assert!(store_entries(&world, "records").is_empty());
    assert!(store_entries(&world, "tmp").is_empty());
    assert_eq!(
        world.ferry_ok(&["load", "-i", &saved_arg]).trim(),
        "Loaded image: web:1"
    );
    let back: serde_json::Value =
        serde_json::from_str(&world.ferry_ok(&["image", "inspect", "web:1"])).expect("JSON");
    assert_eq!(back[0]["Id"], id.as_str());
    let page = world.ferry_ok(&["run", "--rm", "web:1", "cat", "/www/index.html"]);
    assert_eq!(page, "hello from the top layer\n");
    world.ferry_ok(&["rmi", "web:1"]);
    assert!(store_entries(&world, "layers").is_empty());
}

#[test]
fn an_oci_layout_loads_and_a_damaged_one_leaves_nothing() {
    let world = World::new();
    let layers = web_layers();
    let config = web_config(&layers);

    // A damaged layer blob is refused by its digest; nothing of it stays.
    let damaged = world.dir.join("damaged.tar");
    image::oci_archive(
        &damaged,
        "localhost:5000/web:oci",
        &layers,
        &config,
        Some(1),
    );
    let out = load_stdin(&world, &damaged);
    assert!(!out.status.success(), "a damaged image loaded");
    assert!(stderr(&out).contains("digest mismatch"), "{}", stderr(&out));
    assert_eq!(world.ferry_ok(&["images", "-q"]), "");
    assert!(store_entries(&world, "records").is_empty());
    assert!(store_entries(&world, "tmp").is_empty());
    // The first layer was sound and may stay for the next load to reuse,
    // but nothing half-unpacked may.
    let left = store_entries(&world, "layers");
    assert!(
        left.iter().filter(|l| !l.ends_with(".blob")).count() <= 1,
        "{left:?}"
    );

    // A config whose diff_ids do not match the layers is refused too.
    let lying = image::config(&[layers[0].clone(), b"not this layer".to_vec()], json!({}));
    let archive = world.dir.join("lying.tar");
    image::docker_archive(&archive, &["lying:1"], &layers, &lying);
    let out = load_stdin(&world, &archive);
    assert!(stderr(&out).contains("digest mismatch"), "{}", stderr(&out));

    // The sound layout loads (from standard input) under its full name.
    let sound = world.dir.join("sound.tar");
    image::oci_archive(&sound, "localhost:5000/web:oci", &layers, &config, None);
    let out = load_stdin(&world, &sound);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "Loaded image: localhost:5000/web:oci");
    let inspect: serde_json::Value =
        serde_json::from_str(&world.ferry_ok(&["image", "inspect", "localhost:5000/web:oci"]))
            .expect("inspect JSON");
    assert_eq!(inspect[0]["Id"], image::digest(&config));
    assert_eq!(inspect[0]["Layers"].as_array().map(Vec::len), Some(2));
    let page = world.ferry_ok(&[
        "run",
        "--rm",
        "localhost:5000/web:oci",
        "cat",
        "/www/index.html",
    ]);
    assert_eq!(page, "hello from the top layer\n");

    // Not an archive of either format, an unknown image: named errors.
    let junk = world.dir.join("junk.tar");
    std::fs::write(&junk, vec![0u8; 4096]).expect("junk");
    let out = load_stdin(&world, &junk);
    assert!(
        stderr(&out).contains("neither a `docker save` archive nor an OCI image layout"),
        "{}",
        stderr(&out)
    );
    let out = world.ferry(&["image", "inspect", "nosuch:1"]);
    assert!(
        stderr(&out).contains("no such image: nosuch:1"),
        "{}",
        stderr(&out)
    );
    let out = world.ferry(&["run", "--rm", "--entrypoint", "/bin/sh", "nosuch:1"]);
    assert!(!out.status.success());
    assert!(store_entries(&world, "tmp").is_empty());
}

#[test]
fn an_image_pulled_from_a_registry_runs_and_failures_are_named() {
    let world = World::new();
    let registry = Registry::start(&world);
    let layers = web_layers();
    let config = web_config(&layers);
    let archive = world.dir.join("push.tar");
    image::oci_archive(&archive, "web:pushed", &layers, &config, None);
    registry.push(&world, &archive, "team/web:1");

    let name = format!("{}/team/web:1", registry::ADDR);
    let out = world.ferry_ok(&["pull", &name]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.ends_with(": Pull complete"))
            .count(),
        2,
        "{out}"
    );
    assert_eq!(lines.last(), Some(&name.as_str()), "{out}");
    let page = world.ferry_ok(&["run", "--rm", &name, "cat", "/www/index.html"]);
    assert_eq!(page, "hello from the top layer\n");
    let inspect: serde_json::Value =
        serde_json::from_str(&world.ferry_ok(&["image", "inspect", &name])).expect("JSON");
    assert_eq!(inspect[0]["Id"], image::digest(&config));

    // What ferry saves, OCI tools read: skopeo pushes it back under a new
    // name, and that pulls as the same image.
    let saved = world.dir.join("pulled.tar");
    world.ferry_ok(&["save", "-o", &saved.display().to_string(), &name]);
    registry.push(&world, &saved, "team/resaved:1");
    world.ferry_ok(&["pull", "-q", &format!("{}/team/resaved:1", registry::ADDR)]);
    let resaved: serde_json::Value = serde_json::from_str(&world.ferry_ok(&[
        "image",
        "inspect",
        &format!("{}/team/resaved:1", registry::ADDR),
    ]))
    .expect("JSON");
    assert_eq!(resaved[0]["Id"], image::digest(&config));
    world.ferry_ok(&["rmi", &format!("{}/team/resaved:1", registry::ADDR)]);

    // Pulled again under another tag: the layers are not fetched twice.
    registry.push(&world, &archive, "team/web:2");
    let again = world.ferry_ok(&["pull", &format!("{}/team/web:2", registry::ADDR)]);
    assert_eq!(again.matches("Already exists").count(), 2, "{again}");

    // A multi-platform image: the manifest for this host's platform is
    // the one pulled (the arm64 image would say so when run).
    let arm = String::from_utf8(image::config(&layers, json!({ "Cmd": ["echo", "arm64"] })))
        .expect("utf-8")
        .replace("\"amd64\"", "\"arm64\"")
        .into_bytes();
    let amd = image::config(&layers, json!({ "Cmd": ["echo", "amd64"] }));
    let multi = world.dir.join("multi.tar");
    image::oci_index_archive(
        &multi,
        "multi:1",
        &[("arm64", &layers, &arm), ("amd64", &layers, &amd)],
    );
    registry.push_all(&world, &multi, "team/multi:1");
    let multi_name = format!("{}/team/multi:1", registry::ADDR);
    world.ferry_ok(&["pull", "-q", &multi_name]);
    assert_eq!(world.ferry_ok(&["run", "--rm", &multi_name]), "amd64\n");
    let inspect: serde_json::Value =
        serde_json::from_str(&world.ferry_ok(&["image", "inspect", &multi_name])).expect("JSON");
    assert_eq!(inspect[0]["Architecture"], "amd64");
    world.ferry_ok(&["rmi", &multi_name]);

    // Failures name their cause and leave nothing behind.
    let missing = world.ferry(&["pull", &format!("{}/team/nosuch:1", registry::ADDR)]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no such image: 127.0.0.1:5000/team/nosuch:1"),
        "{}",
        stderr(&missing)
    );
    let unreachable = world.ferry(&["pull", "127.0.0.1:5999/team/web:1"]);
    assert!(
        stderr(&unreachable).contains("registry 127.0.0.1:5999 unreachable"),
        "{}",
        stderr(&unreachable)
    );
    let bad = world.ferry(&["pull", "Not/A:Valid:Name"]);
    assert!(
        stderr(&bad).contains("invalid reference format"),
        "{}",
        stderr(&bad)
    );
    assert!(store_entries(&world, "tmp").is_empty());

    world.ferry_ok(&["rmi", &name, &format!("{}/team/web:2", registry::ADDR)]);
    assert!(store_entries(&world, "layers").is_empty());
}

#[test]
fn a_registry_that_wants_a_login_serves_pulls_after_ferry_login_and_not_after_logout() {
    let world = World::new();
    let registry = Registry::start_with_login(&world, "ferry-user", "s3cret:pass");
    let layers = web_layers();
    let config = web_config(&layers);
    let archive = world.dir.join("private.tar");
    image::oci_archive(&archive, "web:private", &layers, &config, None);
    registry.push(&world, &archive, "team/private:1");
    let name = format!("{}/team/private:1", registry.addr());

    // The CLI keeps credentials under the world's directory, and never
    // reads the machine's Docker login.
    let config_dir = world.dir.join("ferry-config");
    let no_docker = world.dir.join("no-docker-config");
    let env = [
        ("FERRY_CONFIG", config_dir.as_path()),
        ("DOCKER_CONFIG", no_docker.as_path()),
    ];
    let ferry = |args: &[&str], stdin: &str| world.ferry_with_input(args, stdin.as_bytes(), &env);

    let anonymous = ferry(&["pull", "-q", &name], "");
    assert!(!anonymous.status.success());
    assert!(
        stderr(&anonymous).contains("refused access") && stderr(&anonymous).contains("ferry login"),
        "{}",
        stderr(&anonymous)
    );
    let wrong = ferry(
        &[
            "login",
            "-u",
            "ferry-user",
            "--password-stdin",
            registry.addr(),
        ],
        "wrong\n",
    );
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("refused the credentials"),
        "{}",
        stderr(&wrong)
    );
    assert!(
        !config_dir.join("config.json").exists(),
        "a refused login was stored"
    );

    let login = ferry(
        &[
            "login",
            "-u",
            "ferry-user",
            "--password-stdin",
            registry.addr(),
        ],
        "s3cret:pass\n",
    );
    assert!(login.status.success(), "{}", stderr(&login));
    assert!(
        stdout(&login).starts_with("Login Succeeded"),
        "{}",
        stdout(&login)
    );
    let stored = std::fs::read_to_string(config_dir.join("config.json")).expect("config.json");
    assert!(stored.contains(registry.addr()), "{stored}");
    assert!(
        !stored.contains("s3cret"),
        "the password is stored in clear: {stored}"
    );

    let pulled = ferry(&["pull", "-q", &name], "");
    assert!(pulled.status.success(), "{}", stderr(&pulled));
    let page = world.ferry_ok(&["run", "--rm", &name, "cat", "/www/index.html"]);
    assert_eq!(page, "hello from the top layer\n");
    world.ferry_ok(&["rmi", &name]);

    let logout = ferry(&["logout", registry.addr()], "");
    assert!(logout.status.success(), "{}", stderr(&logout));
    let again = ferry(&["pull", "-q", &name], "");
    assert!(!again.status.success(), "pulled after logout");
}

#[test]
fn system_df_counts_shared_layers_once_and_prune_removes_only_what_nothing_uses() {
    let world = World::new();
    let base = Layer::new().busybox(APPLETS).finish();
    let load = |tag: &str, page: &str| {
        let top = Layer::new()
            .dir("www")
            .file("www/index.html", 0o644, page.as_bytes())
            .finish();
        let layers = vec![base.clone(), top];
        let config = image::config(
            &layers,
            json!({ "Cmd": ["sh"], "Env": ["PATH=/bin"], "Labels": { "page": page } }),
        );
        let archive = world.dir.join(format!("{page}.tar"));
        image::docker_archive(&archive, &[tag], &layers, &config);
        world.ferry_ok(&["load", "-q", "-i", &archive.display().to_string()]);
        image::digest(&config)
    };
    load("used:1", "a");
    load("stopped:1", "b");
    let dangling = load("spare:1", "c");
    // The name moves to the new image: the old one is left without one.
    load("spare:1", "d");
    world.ferry_ok(&["run", "-d", "--name", "keep", "used:1", "sleep", "300"]);
    world.ferry_ok(&[
        "run",
        "--name",
        "done",
        "stopped:1",
        "sh",
        "-c",
        "i=0; while [ $i -lt 2000 ]; do echo 0123456789012345678901234567890123456789; \
         i=$((i+1)); done > /written",
    ]);

    // Four images, two with containers; the busybox layer they share is
    // counted once. Two containers, one running.
    let df = world.ferry_ok(&["system", "df"]);
    let row = |kind: &str| -> Vec<String> {
        df.lines()
            .find(|l| l.starts_with(kind))
            .unwrap_or_else(|| panic!("no {kind} row: {df}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let images = row("Images");
    assert_eq!(images[1..3], ["4", "2"], "{df}");
    let mb = |s: &str| -> f64 {
        s.strip_suffix("MB")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not in MB: {s} ({df})"))
    };
    let busybox = std::fs::metadata("/bin/busybox").expect("busybox").len() as f64 / 1e6;
    let layers = mb(&images[3]);
    assert!(
        layers >= busybox - 0.1 && layers < busybox * 1.5,
        "layers {layers} MB for a {busybox} MB busybox shared by four images: {df}"
    );
    let containers = row("Containers");
    assert_eq!(containers[1..3], ["2", "1"], "{df}");

    // Without --force and without a terminal to ask on, nothing goes.
    let out = world.ferry(&["image", "prune"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));

    // The nameless image goes (with its own top layer), and only it.
    let pruned = world.ferry_ok(&["image", "prune", "-f"]);
    assert!(pruned.contains(&format!("deleted: {dangling}")), "{pruned}");
    assert_eq!(world.ferry_ok(&["images", "-q"]).lines().count(), 3);

    // The stopped container goes with what it wrote (80 kB), not the
    // running one.
    let pruned = world.ferry_ok(&["container", "prune", "-f"]);
    assert!(pruned.contains("Deleted Containers:"), "{pruned}");
    let reclaimed = pruned
        .lines()
        .find_map(|l| l.strip_prefix("Total reclaimed space: "))
        .and_then(|s| s.strip_suffix("kB"))
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no space in kB: {pruned}"));
    assert!(reclaimed >= 80.0, "{pruned}");
    let names = world.ferry_ok(&["ps", "-a"]);
    assert!(names.contains("keep") && !names.contains("done"), "{names}");

    // -a: every image no container uses; the running one's stays, with
    // its two layers (and their blobs) and nothing else.
    world.ferry_ok(&["system", "prune", "-a", "-f"]);
    let left = world.ferry_ok(&["images"]);
    assert!(left.contains("used") && left.lines().count() == 2, "{left}");
    assert_eq!(store_entries(&world, "layers").len(), 4);
    world.ferry_ok(&["rm", "-f", "keep"]);
}

#[test]
fn image_and_container_churn_leaves_nothing_behind() {
    let world = World::new();
    let base = Layer::new().busybox(APPLETS).finish();
    let mut tags = Vec::new();
    for n in 0..2 {
        let top = Layer::new()
            .dir("www")
            .file("www/index.html", 0o644, format!("{n}\n").as_bytes())
            .finish();
        let layers = vec![base.clone(), top];
        let config = image::config(
            &layers,
            json!({ "Cmd": ["sh"], "Env": ["PATH=/bin"], "Labels": { "n": n.to_string() } }),
        );
        let archive = world.dir.join(format!("churn{n}.tar"));
        let tag = format!("churn:{n}");
        image::docker_archive(&archive, &[&tag], &layers, &config);
        world.ferry_ok(&["load", "-q", "-i", &archive.display().to_string()]);
        tags.push(tag);
    }
    for round in 0..6 {
        let tag = &tags[round % 2];
        let name = format!("churn{round}");
        // Attached and removed by the client, or detached, written to,
        // exec'd into and removed by force.
        if round % 3 == 0 {
            let out = world.ferry_ok(&["run", "--rm", tag, "cat", "/www/index.html"]);
            assert_eq!(out, format!("{}\n", round % 2));
        } else {
            world.ferry_ok(&["run", "-d", "--name", &name, tag, "sleep", "300"]);
            world.ferry_ok(&["exec", &name, "sh", "-c", "echo x > /scratch"]);
            world.ferry_ok(&["rm", "-f", &name]);
        }
    }
    for tag in &tags {
        world.ferry_ok(&["rmi", tag]);
    }
    for dir in ["layers", "blobs/sha256", "records", "tmp"] {
        assert!(
            store_entries(&world, dir).is_empty(),
            "{dir} keeps {:?}",
            store_entries(&world, dir)
        );
    }
    assert!(
        std::fs::read_dir(world.dir.join("state/containers"))
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "container state left"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let world_dir = world.dir.display().to_string();
    assert!(
        !mounts.lines().any(|l| l.contains(&world_dir)),
        "mounts left under {world_dir}"
    );
    assert!(
        world.container_cgroups().is_empty(),
        "{:?}",
        world.container_cgroups()
    );
    assert_eq!(world.datapath()["Endpoints"], 0);
}
