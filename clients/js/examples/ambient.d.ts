// Just enough of Node and `ws` for the examples, so the check needs no @types packages.
declare module "ws" {
  const WebSocket: import("switchboard-client").WebSocketConstructor;
  export default WebSocket;
}
declare const process: { argv: string[] };
