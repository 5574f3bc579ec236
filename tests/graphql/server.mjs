// The graphql-sse protocol's reference server (the npm package graphql-sse
// over Node's http), for tests/graphql.rs. A subscription `ticks(count)`
// yields `count` ticks 10 ms apart, then completes. Listens on a free
// loopback port and prints "listening PORT" once ready; every request's
// method and body go to stderr, one JSON line each.
import http from 'node:http';
import { GraphQLInt, GraphQLNonNull, GraphQLObjectType, GraphQLSchema, GraphQLString } from 'graphql';
import { createHandler } from 'graphql-sse/lib/use/http';

const Tick = new GraphQLObjectType({
  name: 'Tick',
  fields: {
    n: { type: new GraphQLNonNull(GraphQLInt) },
    label: { type: new GraphQLNonNull(GraphQLString) },
  },
});

const schema = new GraphQLSchema({
  query: new GraphQLObjectType({
    name: 'Query',
    fields: { hello: { type: GraphQLString, resolve: () => 'world' } },
  }),
  subscription: new GraphQLObjectType({
    name: 'Subscription',
    fields: {
      ticks: {
        type: Tick,
        args: { count: { type: new GraphQLNonNull(GraphQLInt) } },
        subscribe: async function* (_, { count }) {
          for (let n = 1; n <= count; n++) {
            await new Promise((resolve) => setTimeout(resolve, 10));
            yield { ticks: { n, label: `tick ${n}` } };
          }
        },
      },
    },
  }),
});

const handler = createHandler({ schema });

const server = http.createServer(async (req, res) => {
  process.stderr.write(JSON.stringify({ method: req.method, url: req.url, accept: req.headers.accept }) + '\n');
  try {
    await handler(req, res);
  } catch (err) {
    process.stderr.write(`handler error: ${err}\n`);
    res.writeHead(500).end();
  }
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});

// The test holds stdin open; when it exits, so does the server.
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
