"""Response-side gadgets and mutations. A case describes what the scripted backend sends
for the first request (step a1) of a test; every other request gets a normal answer."""
import random

POISON = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Poison: 1\r\n\r\nPOISON"
A1 = b"A1BODY"
CRLF = b"\r\n"


def resp(status=b"HTTP/1.1 200 OK", headers=(), body=b"", eol=CRLF):
    out = status + eol
    for h in headers:
        out += h + eol
    return out + eol + body


def chunked(payload=A1, last=b"0\r\n\r\n"):
    return b"%x\r\n" % len(payload) + payload + b"\r\n" + last


def case(name, script, method="GET", after="keep", early=None, **kw):
    if isinstance(script, bytes):
        script = [script]
    d = dict(name=name, script=script, method=method, after=after, early=early)
    d.update(kw)
    return d


def gadgets():
    C = []
    # baseline
    C.append(case("baseline_cl", resp(headers=[b"Content-Length: 6"], body=A1)))
    C.append(case("baseline_chunked", resp(headers=[b"Transfer-Encoding: chunked"], body=chunked())))
    # --- CL and TE together: CL covers chunked body + POISON; TE ends before POISON
    cb = b"0\r\n\r\n" + POISON
    for order in ("cl_te", "te_cl"):
        h = [b"Content-Length: %d" % len(cb), b"Transfer-Encoding: chunked"]
        if order == "te_cl":
            h.reverse()
        C.append(case("clte_" + order, resp(headers=h, body=cb)))
    C.append(case("clte_cl0_te", resp(headers=[b"Content-Length: 0", b"Transfer-Encoding: chunked"], body=chunked() )))
    C.append(case("clte_late_poison", [resp(headers=[b"Content-Length: %d" % len(cb), b"Transfer-Encoding: chunked"], body=b"0\r\n\r\n"), 0.3, POISON]))
    # --- two CLs
    C.append(case("cl2_0_then_n", resp(headers=[b"Content-Length: 0", b"Content-Length: %d" % len(POISON)], body=POISON)))
    C.append(case("cl2_n_then_0", resp(headers=[b"Content-Length: %d" % len(POISON), b"Content-Length: 0"], body=POISON)))
    C.append(case("cl2_same", resp(headers=[b"Content-Length: 6", b"Content-Length: 6"], body=A1)))
    # --- CL value spellings: the body is A1BODY + POISON; "6" means POISON is extra
    vals = [b"+6", b"06", b"0000000000000000006", b"00000000000000000006", b" 6", b"6 ", b"6\t",
            b"6,6", b"6, 6", b"6 ,6", b"6 6", b"0x6", b"6.0", b"6e0", b"-6", b"", b"6a", b"a6",
            b"18446744073709551622", b"4294967302", b"99999999999999999999", b"9223372036854775807",
            b"18446744073709551615", b"0, 6", b"6, 0", b",6", b"6,"]
    for v in vals:
        C.append(case("clval_" + v.decode("latin1").replace(" ", "SP").replace("\t", "TAB"),
                      resp(headers=[b"Content-Length: " + v], body=A1 + POISON)))
    # CL smaller than the body / larger than the body
    C.append(case("cl_short_extra_same_write", resp(headers=[b"Content-Length: 6"], body=A1 + POISON)))
    C.append(case("cl_short_extra_late", [resp(headers=[b"Content-Length: 6"], body=A1), 0.3, POISON]))
    C.append(case("cl_short_extra_very_late", [resp(headers=[b"Content-Length: 6"], body=A1), 1.2, POISON]))
    C.append(case("cl_extra_crlf", resp(headers=[b"Content-Length: 6"], body=A1 + b"\r\n")))
    C.append(case("cl_long_then_close", resp(headers=[b"Content-Length: 100"], body=A1), after="close"))
    C.append(case("cl_long_hold", resp(headers=[b"Content-Length: 100"], body=A1), after="hold"))
    # --- TE obfuscations: body "6 A1BODY 0" + POISON, no CL
    tb = chunked() + POISON
    tes = [b"xchunked", b"chunked, identity", b"identity", b"identity, chunked", b"\tchunked", b"Chunked",
           b"CHUNKED", b"chunked ", b" chunked", b"chunked;q=1", b"chunked, chunked", b"gzip, chunked",
           b"chunked, gzip", b"chunk", b"chunked\x0b", b"", b",chunked", b"chunked,", b"\"chunked\"",
           b"chunked\x00", b"ch\xfcnked"]
    for v in tes:
        C.append(case("te_" + v.decode("latin1").encode("unicode_escape").decode().replace(" ", "SP"),
                      resp(headers=[b"Transfer-Encoding: " + v], body=tb)))
    for nm in [b"Transfer-Encoding :", b"Transfer_Encoding:", b"Transfer-Encoding\t:", b"TRANSFER-ENCODING:",
               b" Transfer-Encoding:", b"Transfer-Encoding:\t"]:
        C.append(case("tename_" + nm.decode().replace(" ", "SP").replace("\t", "TAB"),
                      resp(headers=[nm + b" chunked"], body=tb)))
    C.append(case("te2_chunked_identity", resp(headers=[b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"], body=tb)))
    C.append(case("te2_identity_chunked", resp(headers=[b"Transfer-Encoding: identity", b"Transfer-Encoding: chunked"], body=tb)))
    C.append(case("te2_chunked_empty", resp(headers=[b"Transfer-Encoding: chunked", b"Transfer-Encoding: "], body=tb)))
    C.append(case("te_http10_chunked", resp(status=b"HTTP/1.0 200 OK", headers=[b"Transfer-Encoding: chunked"], body=tb)))
    C.append(case("te_http10_chunked_keepalive", resp(status=b"HTTP/1.0 200 OK", headers=[b"Transfer-Encoding: chunked", b"Connection: keep-alive"], body=chunked())))
    C.append(case("te_identity_cl", resp(headers=[b"Transfer-Encoding: identity", b"Content-Length: 6"], body=A1 + POISON)))
    # --- chunk-size syntax
    def ch(name, body, **kw):
        C.append(case("chunk_" + name, resp(headers=[b"Transfer-Encoding: chunked"], body=body), **kw))
    ch("ext", b"6;ext=1\r\nA1BODY\r\n0\r\n\r\n")
    ch("ext_quoted", b"6;a=\"x;y\"\r\nA1BODY\r\n0;b\r\n\r\n")
    ch("ext_quoted_crlf", b"6;a=\"\r\n0\r\n\r\n\"\r\nA1BODY\r\n0\r\n\r\n" + POISON)
    ch("ext_bare_semicolon", b"6;\r\nA1BODY\r\n0\r\n\r\n")
    ch("size_ws", b"6 \r\nA1BODY\r\n0\r\n\r\n")
    ch("size_ws_ext", b"6 ;x\r\nA1BODY\r\n0\r\n\r\n")
    ch("leading_zeros", b"0006\r\nA1BODY\r\n0000\r\n\r\n")
    ch("many_leading_zeros", b"00000000000000000006\r\nA1BODY\r\n0\r\n\r\n")
    ch("0x", b"0x6\r\nA1BODY\r\n0\r\n\r\n" + POISON)
    ch("plus", b"+6\r\nA1BODY\r\n0\r\n\r\n" + POISON)
    ch("neg", b"-6\r\nA1BODY\r\n0\r\n\r\n" + POISON)
    ch("overflow64", b"10000000000000006\r\nA1BODY\r\n0\r\n\r\n" + POISON)
    ch("overflow_f", b"ffffffffffffffff6\r\nA1BODY\r\n0\r\n\r\n" + POISON)
    ch("big_hold", b"ffffff\r\nA1BODY", after="hold")
    ch("bare_lf_size", b"6\nA1BODY\r\n0\r\n\r\n")
    ch("bare_lf_after_data", b"6\r\nA1BODY\n0\r\n\r\n" + POISON)
    ch("bare_lf_last", b"6\r\nA1BODY\r\n0\n\n" + POISON)
    ch("bare_cr_size", b"6\rA1BODY\r\n0\r\n\r\n")
    ch("missing_crlf_after_data", b"6\r\nA1BODY0\r\n\r\n" + POISON)
    ch("data_longer_than_size", b"4\r\nA1BODY\r\n0\r\n\r\n" + POISON)
    ch("trailer_ok", b"6\r\nA1BODY\r\n0\r\nX-Trailer: 1\r\n\r\n")
    ch("trailer_forbidden", b"6\r\nA1BODY\r\n0\r\nContent-Length: 99\r\nTransfer-Encoding: gzip\r\nSet-Cookie: evil=1\r\nHost: evil\r\nConnection: close\r\nServer: leak\r\n\r\n")
    ch("trailer_obsfold", b"6\r\nA1BODY\r\n0\r\nX-T: a\r\n b\r\n\r\n" + POISON)
    ch("trailer_nocolon", b"6\r\nA1BODY\r\n0\r\ngarbage\r\n\r\n" + POISON)
    ch("trailer_space_before_colon", b"6\r\nA1BODY\r\n0\r\nX-T : 1\r\n\r\n")
    ch("trailer_is_response", b"6\r\nA1BODY\r\n0\r\n" + POISON)
    ch("last_chunk_no_final_crlf_close", b"6\r\nA1BODY\r\n0\r\n", after="close")
    ch("eof_mid_chunk", b"6\r\nA1B", after="close")
    ch("no_last_chunk_close", b"6\r\nA1BODY\r\n", after="close")
    ch("empty_size_line", b"\r\n6\r\nA1BODY\r\n0\r\n\r\n" + POISON)
    ch("chunk_then_poison_late", b"6\r\nA1BODY\r\n0\r\n\r\n", )
    C[-1]["script"] = C[-1]["script"] + [0.3, POISON]
    # --- bare LF / CR in status line and headers
    C.append(case("lf_everywhere", resp(headers=[b"Content-Length: 6"], body=A1, eol=b"\n")))
    C.append(case("lf_status_only", b"HTTP/1.1 200 OK\nContent-Length: 6\r\n\r\nA1BODY"))
    C.append(case("lf_header_cl", b"HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 6\r\n\r\nA1BODY" + POISON))
    C.append(case("cr_in_status", b"HTTP/1.1 200 O\rK\r\nContent-Length: 6\r\n\r\nA1BODY"))
    C.append(case("cr_in_header", b"HTTP/1.1 200 OK\r\nX-A: a\rContent-Length: 0\r\nContent-Length: 6\r\n\r\nA1BODY"))
    C.append(case("cr_cr_lf", b"HTTP/1.1 200 OK\r\r\nContent-Length: 6\r\n\r\nA1BODY"))
    C.append(case("lf_cr_end", b"HTTP/1.1 200 OK\r\nContent-Length: 6\n\r\nA1BODY"))
    C.append(case("lf_lf_end_crlf_cl0", b"HTTP/1.1 200 OK\r\nContent-Length: 0\n\nContent-Length: 6\r\n\r\nA1BODY"))
    # --- obs-fold
    C.append(case("fold_other", resp(headers=[b"X-A: a", b" b", b"Content-Length: 6"], body=A1)))
    C.append(case("fold_cl", resp(headers=[b"Content-Length:", b" 6"], body=A1 + POISON)))
    C.append(case("fold_te", resp(headers=[b"Transfer-Encoding:", b" chunked"], body=tb)))
    C.append(case("fold_hides_cl", resp(headers=[b"X-A: a", b"\tContent-Length: 0", b"Content-Length: 6"], body=A1)))
    C.append(case("fold_first_line", resp(headers=[b" X-A: a", b"Content-Length: 6"], body=A1)))
    # --- 1xx
    F = resp(headers=[b"Content-Length: 6"], body=A1)
    C.append(case("1xx_100", resp(b"HTTP/1.1 100 Continue") + F))
    C.append(case("1xx_102", resp(b"HTTP/1.1 102 Processing") + F))
    C.append(case("1xx_103_link", resp(b"HTTP/1.1 103 Early Hints", [b"Link: </s.css>; rel=preload", b"Server: leak", b"X-Powered-By: leak"]) + F))
    C.append(case("1xx_101_unasked", resp(b"HTTP/1.1 101 Switching Protocols", [b"Upgrade: websocket", b"Connection: upgrade"]) + F))
    C.append(case("1xx_many_10", resp(b"HTTP/1.1 103 Early Hints", [b"Link: </a>"]) * 10 + F))
    C.append(case("1xx_many_40", resp(b"HTTP/1.1 103 Early Hints", [b"Link: </a>"]) * 40 + F))
    C.append(case("1xx_with_cl_body", resp(b"HTTP/1.1 103 Early Hints", [b"Content-Length: %d" % len(POISON)], POISON) + F))
    C.append(case("1xx_with_te_body", resp(b"HTTP/1.1 100 Continue", [b"Transfer-Encoding: chunked"], b"0\r\n\r\n") + F))
    C.append(case("1xx_conn_close", resp(b"HTTP/1.1 103 Early Hints", [b"Connection: close"]) + F))
    C.append(case("1xx_http10", resp(b"HTTP/1.0 103 Early Hints") + F))
    C.append(case("1xx_199", resp(b"HTTP/1.1 199 Odd") + F))
    C.append(case("1xx_only_then_close", resp(b"HTTP/1.1 103 Early Hints"), after="close"))
    C.append(case("1xx_split_late", [resp(b"HTTP/1.1 103 Early Hints", [b"Link: </a>"]), 0.3, F]))
    # --- 204 / 304 / HEAD
    C.append(case("204_cl_body", resp(b"HTTP/1.1 204 No Content", [b"Content-Length: %d" % len(POISON)], POISON)))
    C.append(case("204_body_same_write", resp(b"HTTP/1.1 204 No Content", [], POISON)))
    C.append(case("204_te_body", resp(b"HTTP/1.1 204 No Content", [b"Transfer-Encoding: chunked"], b"0\r\n\r\n")))
    C.append(case("204_body_late", [resp(b"HTTP/1.1 204 No Content"), 0.3, POISON]))
    C.append(case("304_cl_body", resp(b"HTTP/1.1 304 Not Modified", [b"Content-Length: %d" % len(POISON)], POISON)))
    C.append(case("304_cl_only", resp(b"HTTP/1.1 304 Not Modified", [b"Content-Length: 1234"])))
    C.append(case("304_body_late", [resp(b"HTTP/1.1 304 Not Modified", [b"Content-Length: 6"]), 0.3, POISON]))
    C.append(case("head_cl_body", resp(headers=[b"Content-Length: %d" % len(POISON)], body=POISON), method="HEAD"))
    C.append(case("head_cl_nobody", resp(headers=[b"Content-Length: 1234"]), method="HEAD"))
    C.append(case("head_te_body", resp(headers=[b"Transfer-Encoding: chunked"], body=b"0\r\n\r\n" + POISON), method="HEAD"))
    C.append(case("head_body_late", [resp(headers=[b"Content-Length: %d" % len(POISON)]), 0.3, POISON], method="HEAD"))
    C.append(case("head_noframing_body", resp(body=POISON), method="HEAD"))
    C.append(case("205_body", resp(b"HTTP/1.1 205 Reset Content", [b"Content-Length: 6"], A1)))
    # --- close-delimited on keep-alive
    C.append(case("noframing_close", resp(body=A1 + POISON), after="close"))
    C.append(case("noframing_hold", resp(body=A1), after="hold"))
    C.append(case("noframing_http10_close", resp(b"HTTP/1.0 200 OK", body=A1 + POISON), after="close"))
    C.append(case("noframing_reset", resp(body=A1), after="reset"))
    # --- extra bytes after complete response
    C.append(case("extra_response_same_write", F + POISON))
    C.append(case("extra_response_late", [F, 0.3, POISON]))
    C.append(case("extra_response_1200ms", [F, 1.2, POISON]))
    C.append(case("extra_crlfcrlf", F + b"\r\n\r\n"))
    C.append(case("extra_garbage_late", [F, 0.3, b"garbage\r\n"]))
    C.append(case("extra_100_late", [F, 0.3, b"HTTP/1.1 100 Continue\r\n\r\n"]))
    # --- early response (before the request body)
    for st, aft in [(b"200 OK", "close"), (b"413 Payload Too Large", "close"), (b"401 Unauthorized", "drain"), (b"200 OK", "drain")]:
        C.append(case("early_%s_%s" % (st[:3].decode(), aft), resp(b"HTTP/1.1 " + st, [b"Content-Length: 6"], A1),
                      method="POST", after=aft, early=True))
    C.append(case("early_200_nodrain_keep", resp(b"HTTP/1.1 200 OK", [b"Content-Length: 6"], A1), method="POST", after="keep_nodrain", early=True))
    # --- Connection: close spellings; the backend keeps the socket open and later writes POISON
    for v in [b"close", b"Close", b"CLOSE", b"keep-alive, close", b"close, keep-alive", b"clos", b" close", b"close,",
              b"x, close", b"close\tfoo"]:
        C.append(case("connclose_" + v.decode().replace(" ", "SP").replace("\t", "TAB").replace(",", "C"),
                      [resp(headers=[b"Connection: " + v, b"Content-Length: 6"], body=A1), 0.3, POISON]))
    C.append(case("connclose_two_headers", [resp(headers=[b"Connection: foo", b"Connection: close", b"Content-Length: 6"], body=A1), 0.3, POISON]))
    C.append(case("proxy_connection_close", [resp(headers=[b"Proxy-Connection: close", b"Content-Length: 6"], body=A1), 0.3, POISON]))
    # --- HTTP/1.0 responses
    C.append(case("http10_keepalive_cl", resp(b"HTTP/1.0 200 OK", [b"Connection: keep-alive", b"Content-Length: 6"], A1)))
    C.append(case("http10_keepalive_cl_late", [resp(b"HTTP/1.0 200 OK", [b"Connection: keep-alive", b"Content-Length: 6"], A1), 0.3, POISON]))
    C.append(case("http10_cl", resp(b"HTTP/1.0 200 OK", [b"Content-Length: 6"], A1)))
    # --- status lines
    for sl in [b"HTTP/1.1 200", b"HTTP/1.1 200 ", b"HTTP/1.1 200 \xe9t\xe9", b"HTTP/1.1 200 a\tb", b"HTTP/1.1 2000 OK",
               b"HTTP/1.1 20 OK", b"HTTP/1.1 099 X", b"HTTP/1.1 600 X", b"HTTP/1.1 999 X", b"HTTP/2.0 200 OK",
               b"HTTP/1.2 200 OK", b"HTTP/0.9 200 OK", b"HTTP/1.1  200 OK", b"http/1.1 200 OK", b"HTTP/1.1 200 OK\x00",
               b"ICY 200 OK", b"HTTP/1.1 -200 OK", b"HTTP/1.1 2x0 OK", b" HTTP/1.1 200 OK", b"HTTP/1.1 200 OK ",
               b"HTTP/1.1 200 OK\x7f", b"HTTP/1.10 200 OK", b"HTTP/01.1 200 OK", b"HTTP/1.1 200 " + b"R" * 5000]:
        C.append(case("status_" + sl[:40].decode("latin1").encode("unicode_escape").decode().replace(" ", "SP"),
                      resp(sl, [b"Content-Length: 6"], A1)))
    C.append(case("http09_body", A1 + POISON, after="close"))
    C.append(case("leading_crlf", b"\r\n" + F))
    C.append(case("leading_lflf", b"\n\n" + F))
    # --- header names / values
    for h in [b"Content-Length : 6", b"Content-Length\t: 6", b"X Y: 1", b"X-A\x00: 1", b"X-A: a\x00b", b": empty",
              b"X-A:: 1", b"garbage", b"X-A: \x01", b"X-A: \x7f", b"X-\xe9: 1", b"X-A:\xff", b"(X): 1", b"X-A: a\x0bb",
              b"Content-Length: 6\x00"]:
        C.append(case("hdr_" + h.decode("latin1").encode("unicode_escape").decode().replace(" ", "SP")[:40],
                      resp(headers=[h, b"Content-Length: 6"] if not h.startswith(b"Content-Length") else [h], body=A1 + POISON)))
    C.append(case("hdr_long_20k", resp(headers=[b"X-Long: " + b"a" * 20000, b"Content-Length: 6"], body=A1)))
    C.append(case("hdr_long_70k", resp(headers=[b"X-Long: " + b"a" * 70000, b"Content-Length: 6"], body=A1)))
    C.append(case("hdr_many_150", resp(headers=[b"X-H%d: v" % i for i in range(150)] + [b"Content-Length: 6"], body=A1)))
    C.append(case("hdr_many_600", resp(headers=[b"X-H%d: v" % i for i in range(600)] + [b"Content-Length: 6"], body=A1)))
    C.append(case("hdr_hop_leak", resp(headers=[b"Connection: X-Secret", b"X-Secret: s", b"Keep-Alive: timeout=5",
                                                  b"Upgrade: h2c", b"Content-Length: 6"], body=A1)))
    # --- split writes with delays
    C.append(case("split_bytewise_cl", [bytes([b]) for b in F], delay_each=0.003))
    C.append(case("split_bytewise_chunked", [bytes([b]) for b in resp(headers=[b"Transfer-Encoding: chunked"], body=chunked())], delay_each=0.003))
    return C


def split_cases():
    """Each response cut in two at every byte boundary, 15 ms apart."""
    C = []
    for nm, r in [("cl", resp(headers=[b"Content-Length: 6"], body=A1)),
                  ("ch", resp(headers=[b"Transfer-Encoding: chunked"], body=b"6;e=\"q\"\r\nA1BODY\r\n0\r\nX-T: 1\r\n\r\n")),
                  ("1xx", resp(b"HTTP/1.1 103 Early Hints", [b"Link: </a>"]) + resp(headers=[b"Content-Length: 6"], body=A1))]:
        for k in range(1, len(r)):
            C.append(case("split_%s_%03d" % (nm, k), [r[:k], 0.015, r[k:]]))
    return C


MUT_INSERTS = [b"\r", b"\n", b" ", b"\t", b"\x00", b",", b"0", b"1", b"chunked", b"\r\n", b":", b";",
               b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n",
               b"\r\n \r\n", POISON, b"0\r\n\r\n", b"HTTP/1.1 100 Continue\r\n\r\n"]


def mutate_bytes(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        p = rng.randrange(0, len(data) + 1) if data else 0
        if op < 0.4:
            data[p:p] = rng.choice(MUT_INSERTS)
        elif op < 0.6 and data:
            del data[min(p, len(data) - 1)]
        elif op < 0.75 and data:
            data[min(p, len(data) - 1)] = rng.choice(b"\r\n \t\x00,;:0123456789abcdefxX-+")
        elif op < 0.85:
            # duplicate a header line
            lines = bytes(data).split(b"\r\n")
            hdrs = [i for i, l in enumerate(lines[1:], 1) if b":" in l]
            if hdrs:
                i = rng.choice(hdrs)
                lines.insert(i, lines[i])
                data = bytearray(b"\r\n".join(lines))
        else:
            # flip case of a stretch
            q = min(len(data), p + rng.randint(1, 8))
            data[p:q] = bytes(data[p:q]).swapcase()
    return bytes(data)


def mutations(n, seed):
    rng = random.Random(seed)
    base = [g for g in gadgets() if g["early"] is None and not g.get("delay_each")]
    out = []
    for i in range(n):
        g = rng.choice(base)
        whole = b"".join(x for x in g["script"] if isinstance(x, bytes))
        m = mutate_bytes(rng, whole)
        # random split into 1-3 writes
        cuts = sorted(rng.sample(range(1, max(2, len(m))), k=min(rng.randint(0, 2), max(0, len(m) - 2))))
        parts, last = [], 0
        for c in cuts + [len(m)]:
            parts.append(m[last:c])
            last = c
        script = []
        for j, p in enumerate(parts):
            if j:
                script.append(rng.choice([0.0, 0.01, 0.05, 0.3]))
            script.append(p)
        out.append(case("mut%04d_%s" % (i, g["name"]), script, method=g["method"],
                        after=rng.choice(["keep", "keep", "keep", "close"])))
    return out


def extra_cases():
    """Client-side variations: an HTTP/1.0 client, an upgrade request, large (spliced) bodies."""
    C = []
    r10 = b"GET {path} HTTP/1.0\r\nHost: t.example\r\n\r\n"
    r10ka = b"GET {path} HTTP/1.0\r\nHost: t.example\r\nConnection: keep-alive\r\n\r\n"
    C.append(case("c10_chunked", resp(headers=[b"Transfer-Encoding: chunked"], body=chunked()), req=r10))
    C.append(case("c10ka_chunked", resp(headers=[b"Transfer-Encoding: chunked"], body=chunked()), req=r10ka))
    C.append(case("c10ka_cl", resp(headers=[b"Content-Length: 6"], body=A1), req=r10ka))
    C.append(case("c10ka_103", resp(b"HTTP/1.1 103 Early Hints", [b"Link: </a>"]) + resp(headers=[b"Content-Length: 6"], body=A1), req=r10ka))
    C.append(case("c10ka_noframing_close", resp(body=A1), req=r10ka, after="close"))
    up = b"GET {path} HTTP/1.1\r\nHost: t.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    C.append(case("upg_refused_200", resp(headers=[b"Content-Length: 6"], body=A1), req=up))
    C.append(case("upg_refused_200_late", [resp(headers=[b"Content-Length: 6"], body=A1), 0.3, POISON], req=up))
    C.append(case("upg_101_no_upgrade_hdr", resp(b"HTTP/1.1 101 Switching Protocols", [b"Connection: upgrade"]), req=up))
    C.append(case("upg_101_other_proto", resp(b"HTTP/1.1 101 Switching Protocols", [b"Connection: upgrade", b"Upgrade: h2c"]), req=up))
    C.append(case("upg_101_cl", resp(b"HTTP/1.1 101 Switching Protocols", [b"Connection: upgrade", b"Upgrade: websocket", b"Content-Length: 6", b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="], A1), req=up))
    big = b"x" * 300000
    C.append(case("big_cl_extra_same_write", resp(headers=[b"Content-Length: %d" % len(big)], body=big + POISON)))
    C.append(case("big_cl_extra_late", [resp(headers=[b"Content-Length: %d" % len(big)], body=big), 0.3, POISON]))
    C.append(case("big_cl_short", resp(headers=[b"Content-Length: %d" % len(big)], body=big[:1000]), after="close"))
    C.append(case("big_chunked_extra", resp(headers=[b"Transfer-Encoding: chunked"], body=chunked(big) + POISON)))
    C.append(case("big_noframing_close", resp(body=big + POISON), after="close"))
    C.append(case("big_noframing_reset", [resp(body=big), 0.1], after="reset"))
    C.append(case("head_big_cl_body", resp(headers=[b"Content-Length: %d" % len(big)], body=big + POISON), method="HEAD"))
    C.append(case("hdr_12k_reused", resp(headers=[b"X-Long: " + b"a" * 12000, b"Content-Length: 6"], body=A1)))
    C.append(case("hdr_12k_split", [resp(headers=[b"X-Long: " + b"a" * 12000, b"Content-Length: 6"], body=A1)[:5000], 0.05,
                                    resp(headers=[b"X-Long: " + b"a" * 12000, b"Content-Length: 6"], body=A1)[5000:]]))
    C.append(case("chunked_100k_many_chunks", resp(headers=[b"Transfer-Encoding: chunked"],
                                                   body=b"".join(b"a\r\n0123456789\r\n" for _ in range(10000)) + b"0\r\n\r\n")))
    ex = b"POST {path} HTTP/1.1\r\nHost: t.example\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello"
    C.append(case("expect_backend_100_then_final", resp(b"HTTP/1.1 100 Continue") + resp(headers=[b"Content-Length: 6"], body=A1), req=ex, method="POST"))
    C.append(case("expect_backend_417", resp(b"HTTP/1.1 417 Expectation Failed", [b"Content-Length: 6"], A1), req=ex, method="POST"))
    C.append(case("stream_echo_200_chunked_head_first", [b"6\r\nA1BODY\r\n0\r\n\r\n"], method="POST",
                    pre=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"))
    C.append(case("stream_partial_status_first", [b"00 OK\r\nContent-Length: 6\r\n\r\nA1BODY"], method="POST", pre=b"HTTP/1.1 2"))
    C.append(case("stream_unasked_100_first", [resp(headers=[b"Content-Length: 6"], body=A1)], method="POST", pre=b"HTTP/1.1 100 Continue\r\n\r\n"))
    C.append(case("stream_103_first", [resp(headers=[b"Content-Length: 6"], body=A1)], method="POST", pre=b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"))
    return C
