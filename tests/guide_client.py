# The client from the old Lookout for Vision developer guide ("Using the Edge
# Agent API", Python), kept as written. Only the socket address is a variable,
# so the tests can point it at a temporary agent; clients hard-code the default.
import time

import grpc
from edge_agent_pb2_grpc import EdgeAgentStub
import edge_agent_pb2 as pb2
from PIL import Image

SOCKET_ADDRESS = "unix:///tmp/aws.iot.lookoutvision.EdgeAgent.sock"


def start_model_if_needed(stub, model_name):
    # Starting model if needed.
    while True:
        model_description_response = stub.DescribeModel(pb2.DescribeModelRequest(model_component=model_name))
        print(f"DescribeModel() returned {model_description_response}")
        if model_description_response.model_description.status == pb2.RUNNING:
            print("Model is already running.")
            break
        elif model_description_response.model_description.status == pb2.STOPPED:
            print("Starting the model.")
            stub.StartModel(pb2.StartModelRequest(model_component=model_name))
            continue
        elif model_description_response.model_description.status == pb2.FAILED:
            raise Exception(f"model {model_name} failed to start")
        print(f"Waiting for model to start.")
        if model_description_response.model_description.status != pb2.STARTING:
            break
        time.sleep(1.0)


def detect_anomalies(stub, model_name, image_path):
    image = Image.open(image_path)
    image = image.convert("RGB")
    detect_anomalies_response = stub.DetectAnomalies(
        pb2.DetectAnomaliesRequest(
            model_component=model_name,
            bitmap=pb2.Bitmap(
                width=image.size[0],
                height=image.size[1],
                byte_data=bytes(image.tobytes())
            )
        )
    )
    print(f"Image is anomalous - {detect_anomalies_response.detect_anomaly_result.is_anomalous}")
    return detect_anomalies_response


def main(model_component_name, image_path):
    with grpc.insecure_channel(SOCKET_ADDRESS) as channel:
        stub = EdgeAgentStub(channel)
        start_model_if_needed(stub, model_component_name)
        return detect_anomalies(stub, model_component_name, image_path)


if __name__ == "__main__":
    import sys

    main(sys.argv[1], sys.argv[2])
