// The image's HEALTHCHECK: healthy means ready (GET /api/health/ready answers 200), which is what
// docker-compose's `depends_on: condition: service_healthy` waits for. Plain CommonJS with no
// dependencies, so a check costs one short-lived node process and nothing else.
const http = require('node:http');

const port = Number(process.env.CDP_HTTP_PORT || 8080);
const request = http.get({ host: '127.0.0.1', port, path: '/api/health/ready', timeout: 2500 }, (response) => {
  response.resume();
  process.exit(response.statusCode === 200 ? 0 : 1);
});
request.on('timeout', () => request.destroy(new Error('timed out')));
request.on('error', (err) => {
  process.stderr.write(`health check on port ${port}: ${err.message}\n`);
  process.exit(1);
});
