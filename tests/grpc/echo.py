"""A gRPC echo server and client (grpcio, generic handlers over raw bytes,
so no generated code) for ringgate's HTTP/2 upstream tests.

    echo.py serve PORT          prints "ready" once listening
    echo.py call ADDR           runs the calls, prints one JSON line
"""
import json
import sys
from concurrent import futures

import grpc

SERVICE = "ringgate.test.Echo"


def unary(request, context):
    context.set_trailing_metadata((("x-echo-trailer", "unary"),))
    return request


def stream(request, context):
    count = int(request.decode() or "0")
    for i in range(count):
        yield b"message %d " % i + b"x" * (i * 37 % 4096)
    context.set_trailing_metadata((("x-echo-trailer", "stream"),))


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())


def upload(request_iterator, context):
    total = 0
    for message in request_iterator:
        total += len(message)
    return str(total).encode()


def identity(x):
    return x


def serve(port):
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, identity, identity),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, identity, identity),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, identity, identity),
        "Upload": grpc.stream_unary_rpc_method_handler(upload, identity, identity),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(addr):
    out = {}
    with grpc.insecure_channel(addr) as channel:
        method = lambda name, kind: getattr(channel, kind)(
            "/%s/%s" % (SERVICE, name), request_serializer=identity, response_deserializer=identity
        )
        payload = bytes(range(256)) * 300
        reply, call_ = method("Unary", "unary_unary").with_call(payload, timeout=10)
        out["unary_ok"] = reply == payload
        out["unary_trailer"] = dict(call_.trailing_metadata()).get("x-echo-trailer")
        replies = method("Stream", "unary_stream")(b"200", timeout=10)
        messages = list(replies)
        out["stream_count"] = len(messages)
        out["stream_ok"] = all(m.startswith(b"message %d " % i) for i, m in enumerate(messages))
        out["stream_trailer"] = dict(replies.trailing_metadata()).get("x-echo-trailer")
        try:
            method("Fail", "unary_unary")(b"widget", timeout=10)
            out["fail_code"] = "OK"
        except grpc.RpcError as e:
            out["fail_code"] = e.code().name
            out["fail_details"] = e.details()
        chunks = (b"y" * 10000 for _ in range(50))
        out["upload"] = method("Upload", "stream_unary")(chunks, timeout=10).decode()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        call(sys.argv[2])
