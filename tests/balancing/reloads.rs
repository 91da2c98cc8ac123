//! A reload keeps what load-aware balancing sees: requests (and tunnels) still open on the
//! old snapshot count on the new one's least_conn until they end, so a reload (a SIGHUP, a
//! DNS change, a weight set through the admin API) does not send new requests to the busy
//! backend as if it were idle.

use super::*;

both_engines! {
    fn least_conn_still_sees_requests_open_across_a_reload(engine) {
        // Both backends hold `/hold` until the gate opens and answer the rest at once.
        let gate = Gate::default();
        let holding = |name: &str| {
            let g = gate.clone();
            Origin::with_handler(name, move |req| {
                if req.path() == "/hold" {
                    g.wait(Duration::from_secs(20));
                }
                Reply::Default
            })
        };
        let (a, b) = (holding("a"), holding("b"));
        let tables = format!(
            "[[route]]\nupstream = \"app\"\n\n[[upstream]]\nname = \"app\"\nbalance = \"least_conn\"\n{}\n",
            plain(&[&a, &b])
        );
        let proxy = Proxy::start(&config_with(true, &tables), engine);
        let mut held = Client::connect(proxy.addr());
        held.send(&get_with("/hold", &[]));
        // An idle least_conn breaks its all-zero ties by the weighted schedule, which starts
        // at the first backend.
        assert!(a.wait_for(Duration::from_secs(10), |s| !s.requests.is_empty()), "the held request did not reach a");
        let r = admin_post(proxy.admin_addr(), "/reload", None);
        assert_eq!(r.status, 200, "{}", r.body);
        // least_conn on the new snapshot sees a's open request: every next request goes to b
        // (with the count lost, the first tie went to a again).
        let mut c = Client::connect(proxy.addr());
        for i in 0..4 {
            assert_eq!(served_by(&ask(&mut c, &format!("/{i}"), &[])), "b", "request {i} after the reload");
        }
        gate.open();
        assert_eq!(served_by(&held.read_response()), "a");
    }
}
