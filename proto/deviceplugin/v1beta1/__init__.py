"""Device-plugin API v1beta1: `api.proto` and its generated modules (`api_pb2`, `api_pb2_grpc`)."""
