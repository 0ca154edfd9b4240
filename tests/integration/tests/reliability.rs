//! Reliability: full maps are errors, not silent drops; a crash of ferryd
//! breaks no traffic; a restart finds and clears what a crash left behind.

use ferry_integration::World;

fn run_fails(world: &World, args: &[&str], says: &[&str]) {
    let out = world.ferry(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    for s in says {
        assert!(err.contains(s), "{args:?}: {s:?} missing from: {err}");
    }
}

#[test]
fn full_endpoint_and_port_maps_are_clear_errors_that_leave_nothing() {
    let world = World::with_ferryd_args(&["--endpoint-max", "2", "--port-max", "3"]);
    let sleep = ["sleep", "infinity"];
    world.run_with("a", &["-p", "8101:80", "-p", "8102:80"], &sleep);
    // One port left: a container publishing two gets the first into the
    // map, fails on the second, and takes both out again.
    let before = world.footprint();
    run_fails(
        &world,
        &[
            "run", "-d", "--name", "b", "-p", "8103:80", "-p", "8104:80", "--", "sleep", "1",
        ],
        &["the portmap map is full (3 entries)", "--port-max"],
    );
    assert_eq!(world.footprint(), before);
    world.run_with("b", &["-p", "8103:80"], &sleep);
    // Two containers fill the endpoint map.
    let before = world.footprint();
    run_fails(
        &world,
        &["run", "-d", "--name", "c", "--", "sleep", "1"],
        &["the endpoints map is full (2 entries)", "--endpoint-max"],
    );
    assert_eq!(world.footprint(), before);
    // Room again once one is gone.
    world.ferry_ok(&["rm", "-f", "a"]);
    world.run_with("c", &["-p", "8101:80", "-p", "8102:80"], &sleep);
}
