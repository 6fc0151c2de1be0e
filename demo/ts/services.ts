// TypeScript half of the demo: the Shipping service, so one call tree crosses
// languages: Python Checkout.order -> TS Shipping.quote -> Python Inventory.reserve.
// Run: PORT=9081 node_modules/.bin/tsx demo/ts/services.ts
import * as restate from "@restatedev/restate-sdk";

// The SDK calls Promise.withResolvers (Node >= 22); this machine runs Node 20.
// It is only used while handling requests, so defining it here is early enough.
const P = Promise as unknown as { withResolvers?: () => unknown };
if (typeof P.withResolvers !== "function") {
  P.withResolvers = function withResolvers<T>() {
    let resolve!: (value: T | PromiseLike<T>) => void;
    let reject!: (reason?: unknown) => void;
    const promise = new Promise<T>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}

type Order = { sku: string; qty: number };

// The Python services have no TS definitions: describe their handlers with
// interfaces, as the reference page suggests for services in another language.
interface Inventory {
  reserve(ctx: unknown, qty: number): Promise<number>;
}
interface Greeter {
  greet(ctx: unknown, name: string): Promise<string>;
}

const shipping = restate.service({
  name: "Shipping",
  handlers: {
    // Called by Python (Checkout.order); calls Python back (Inventory.reserve).
    quote: async (ctx: restate.Context, order: Order) => {
      const reserved = await ctx
        .objectClient<Inventory>({ name: "Inventory" }, order.sku)
        .reserve(order.qty);
      // A one-way notification to Python, and a delayed reminder a few minutes later.
      ctx.serviceSendClient<Greeter>({ name: "Greeter" }).greet(`shipping ${order.sku}`);
      ctx
        .serviceSendClient<Greeter>({ name: "Greeter" })
        .greet(`reminder for ${order.sku}`, restate.rpc.sendOpts({ delay: { minutes: 2 } }));
      return { sku: order.sku, reserved, price: 4.5 + order.qty };
    },
    // Generic call by name from TS, for completeness.
    track: async (ctx: restate.Context, name: string) => {
      const hello = await ctx.genericCall({
        service: "Greeter",
        method: "greet",
        parameter: name,
        inputSerde: restate.serde.json,
        outputSerde: restate.serde.json,
      });
      return { tracking: name, hello };
    },
  },
});

const port = Number(process.env.PORT ?? 9081);
restate.serve({ services: [shipping], port });
