"""Start PyPI's gcp-storage-emulator (in memory, one bucket) on a localhost port, for tests/test_gcs.py.

    python tests/gcs_emulator.py PORT BUCKET

One addition to the emulator: object downloads carry ``x-goog-generation`` / ``x-goog-metageneration``
headers as real GCS sends them. tensorstore's gcs driver (orbax's array writes, through OCDBT) reads an
object's generation from that header and uses it as the precondition of the next conditional write;
without it a checkpoint whose manifest is written twice fails with "Malformed StorageGeneration".
"""

import sys


def _add_generation_headers() -> None:
    from gcp_storage_emulator.handlers import objects

    original = objects.download

    def download(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except Exception:  # not found etc.: the original handler answers
            obj = None
        if obj is not None:
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
        return original(request, response, storage, *args, **kwargs)

    objects.download = download  # before the server module builds its routes


def main() -> None:
    port, bucket = int(sys.argv[1]), sys.argv[2]
    _add_generation_headers()
    from gcp_storage_emulator.server import create_server

    create_server("localhost", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
    main()
