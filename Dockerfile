# CPU image on Debian 12: the same tools/setup.sh as the README and CI.
#   docker build --network host -t lifted-caffe .
#   docker run --rm --network host lifted-caffe          # runs the tests
#   docker run --rm lifted-caffe .venv/bin/python tools/reproduce.py   # the glyphs job
FROM debian:12
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/lifted
COPY . .
# Object files are not needed to run or test (a rebuild makes them again).
RUN tools/setup.sh && find build -name "*.o" -delete && rm -rf /root/.cache/pip
ENV PATH=/opt/lifted/.venv/bin:$PATH
CMD ["tools/test.sh"]
