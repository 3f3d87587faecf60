# CPU image: the same setup script as the README and CI.
#   docker build -t lifted-caffe .
#   docker run --rm lifted-caffe            # runs the tests
FROM debian:12
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/lifted
COPY . .
RUN tools/setup.sh
CMD ["tools/test.sh"]
